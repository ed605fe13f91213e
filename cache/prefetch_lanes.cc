// PrefetchLanes: a prefetch's chunks split by owner and ordered to follow
// the owners' progress.
#include "cache/prefetch_lanes.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace strata::cache {

PrefetchLanes::PrefetchLanes(std::vector<uint32_t> chunks, OwnerFn owner)
    : owner_(std::move(owner)) {
  Split(std::move(chunks));
}

void PrefetchLanes::Clear() {
  for (int k : {kOwn, kTheirs}) next_[k] = lanes_[k].size();
}

void PrefetchLanes::Resplit() {
  if (!owner_) return;
  std::vector<uint32_t> rest;
  for (int k : {kOwn, kTheirs})
    rest.insert(rest.end(), lanes_[k].begin() + next_[k], lanes_[k].end());
  std::sort(rest.begin(), rest.end());
  Split(std::move(rest));
}

int PrefetchLanes::Window(Lane lane, int workers) const {
  Lane other = lane == kOwn ? kTheirs : kOwn;
  if (Left(other) == 0) return 2 * workers;
  return lane == kOwn ? std::max(1, workers / 2) : workers;
}

std::vector<uint32_t> PrefetchLanes::NextAtOwner(uint32_t chunk, size_t n) const {
  auto it = place_.find(chunk);
  if (it == place_.end()) return {};
  const std::vector<uint32_t>& list = at_owner_[it->second.first];
  size_t from = it->second.second + 1;
  size_t to = std::min(list.size(), from + n);
  return from < to ? std::vector<uint32_t>(list.begin() + from, list.begin() + to)
                   : std::vector<uint32_t>{};
}

void PrefetchLanes::Split(std::vector<uint32_t> chunks) {
  for (int k : {kOwn, kTheirs}) {
    lanes_[k].clear();
    next_[k] = 0;
  }
  at_owner_.clear();
  place_.clear();
  if (!owner_) {
    lanes_[kOwn] = std::move(chunks);
    return;
  }
  // Owners read their own chunks in the object's order, all at about the
  // same pace: a chunk's place in its owner's order says when it lands.
  absl::flat_hash_map<std::string, uint32_t> owners;  // by address: its number
  std::vector<std::pair<uint32_t, uint32_t>> theirs;  // (place at its owner, chunk)
  for (uint32_t c : chunks) {
    std::string owner = owner_(c);
    if (owner.empty()) {
      lanes_[kOwn].push_back(c);
      continue;
    }
    auto [o, fresh] = owners.try_emplace(owner, static_cast<uint32_t>(at_owner_.size()));
    if (fresh) at_owner_.emplace_back();
    std::vector<uint32_t>& list = at_owner_[o->second];
    place_[c] = {o->second, static_cast<uint32_t>(list.size())};
    theirs.push_back({static_cast<uint32_t>(list.size()), c});
    list.push_back(c);
  }
  std::sort(theirs.begin(), theirs.end());
  for (const auto& [place, c] : theirs) lanes_[kTheirs].push_back(c);
}

}  // namespace strata::cache
