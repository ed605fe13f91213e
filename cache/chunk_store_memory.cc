// The chunk store's memory tier: chunks just filled stay in memory, so a
// sequential reader just behind readahead, and a reader of chunks written
// with O_DIRECT, is served without reading them back from disk.
#include <vector>

#include "cache/chunk_store_impl.h"

namespace strata::cache::internal {

uint64_t MemoryTier::Cost(const std::string& key, const ChunkBytes& bytes) {
  constexpr uint64_t kEntryOverhead = 192;  // list node, map slot, control block
  return (bytes.capacity() + kIoAlign - 1) / kIoAlign * kIoAlign + 2 * key.size() + kEntryOverhead;
}

void MemoryTier::Remember(const std::string& key, uint32_t index,
                          std::shared_ptr<const ChunkBytes> bytes) {
  uint64_t cost = Cost(key, *bytes);
  if (cost > budget_) return;
  Forget(key, index);
  bytes_ += cost;
  entries_.push_back(Entry{key, index, std::move(bytes), cost});
  at_[key][index] = std::prev(entries_.end());
  while (bytes_ > budget_) Erase(entries_.begin());
}

const std::shared_ptr<const ChunkBytes>* MemoryTier::Find(const std::string& key,
                                                          uint32_t index) const {
  auto object = at_.find(key);
  if (object == at_.end()) return nullptr;
  auto chunk = object->second.find(index);
  return chunk == object->second.end() ? nullptr : &chunk->second->bytes;
}

void MemoryTier::Erase(std::list<Entry>::iterator it) {
  auto object = at_.find(it->key);
  object->second.erase(it->index);
  if (object->second.empty()) at_.erase(object);
  bytes_ -= it->cost;
  entries_.erase(it);
}

void MemoryTier::Forget(const std::string& key, uint32_t index) {
  auto object = at_.find(key);
  if (object == at_.end()) return;
  auto chunk = object->second.find(index);
  if (chunk != object->second.end()) Erase(chunk->second);
}

void MemoryTier::ForgetObject(const std::string& key) {
  auto object = at_.find(key);
  if (object == at_.end()) return;
  std::vector<std::list<Entry>::iterator> entries;
  for (const auto& [index, it] : object->second) entries.push_back(it);
  for (auto it : entries) Erase(it);
}

}  // namespace strata::cache::internal
