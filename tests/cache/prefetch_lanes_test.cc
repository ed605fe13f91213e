// The order of a prefetch's chunks among nodes that share them: this node's
// own chunks in one lane, the others' in the order their owners read them,
// split again when owners change.
#include "cache/prefetch_lanes.h"

#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata::cache {
namespace {

std::vector<uint32_t> Drain(PrefetchLanes& lanes, PrefetchLanes::Lane lane) {
  std::vector<uint32_t> out;
  while (lanes.Left(lane) > 0) out.push_back(lanes.Take(lane));
  return out;
}

std::vector<uint32_t> Range(uint32_t from, uint32_t to) {
  std::vector<uint32_t> out;
  for (uint32_t i = from; i < to; ++i) out.push_back(i);
  return out;
}

TEST(PrefetchLanesTest, WithoutPeersEveryChunkIsInOneLaneInOrderWithTheWholeWindow) {
  PrefetchLanes lanes({0, 1, 2, 3}, nullptr);
  EXPECT_EQ(lanes.Left(PrefetchLanes::kTheirs), 0u);
  EXPECT_EQ(lanes.Window(PrefetchLanes::kOwn, 8), 16);
  lanes.Resplit();  // nothing to split by
  EXPECT_EQ(Drain(lanes, PrefetchLanes::kOwn), Range(0, 4));
  EXPECT_TRUE(lanes.Empty());
}

TEST(PrefetchLanesTest, OthersChunksComeInTheOrderTheirOwnersReadThem) {
  // a owns 0-5, b owns 6-8, this node owns 9 and 10.
  auto owner = [](uint32_t c) -> std::string { return c < 6 ? "a" : c < 9 ? "b" : ""; };
  PrefetchLanes lanes(Range(0, 11), owner);
  EXPECT_EQ(lanes.Window(PrefetchLanes::kOwn, 8), 4);
  EXPECT_EQ(lanes.Window(PrefetchLanes::kTheirs, 8), 8);
  EXPECT_EQ(lanes.Window(PrefetchLanes::kOwn, 1), 1);
  EXPECT_EQ(Drain(lanes, PrefetchLanes::kOwn), (std::vector<uint32_t>{9, 10}));
  // With its own lane done, the other lane may have every slot.
  EXPECT_EQ(lanes.Window(PrefetchLanes::kTheirs, 8), 16);
  EXPECT_EQ(Drain(lanes, PrefetchLanes::kTheirs),
            (std::vector<uint32_t>{0, 6, 1, 7, 2, 8, 3, 4, 5}));
}

// What each owner is told it will be asked for next, to read ahead.
TEST(PrefetchLanesTest, AChunksNextAtItsOwnerAreThatOwnersFollowingChunks) {
  // a owns the even chunks, b 1, 5 and 9, this node 3 and 7.
  bool b_gone = false;
  auto owner = [&](uint32_t c) -> std::string {
    return c % 4 == 3 ? "" : c % 2 == 0 || b_gone ? "a" : "b";
  };
  PrefetchLanes lanes(Range(0, 10), owner);
  EXPECT_EQ(lanes.NextAtOwner(0, 2), (std::vector<uint32_t>{2, 4}));
  EXPECT_EQ(lanes.NextAtOwner(6, 2), (std::vector<uint32_t>{8}));
  EXPECT_EQ(lanes.NextAtOwner(8, 2), (std::vector<uint32_t>{}));
  EXPECT_EQ(lanes.NextAtOwner(1, 3), (std::vector<uint32_t>{5, 9}));
  EXPECT_EQ(lanes.NextAtOwner(3, 2), (std::vector<uint32_t>{})) << "this node's own";
  // After owners change, from the new split: b is gone, a owns its chunks.
  EXPECT_EQ(lanes.Take(PrefetchLanes::kTheirs), 0u);
  b_gone = true;
  lanes.Resplit();
  EXPECT_EQ(lanes.NextAtOwner(1, 3), (std::vector<uint32_t>{2, 4, 5}));
  EXPECT_EQ(lanes.NextAtOwner(0, 1), (std::vector<uint32_t>{})) << "taken before";
}

TEST(PrefetchLanesTest, ChunksNotTakenYetAreSplitAgainWhenOwnersChange) {
  std::map<uint32_t, std::string> owners;
  for (uint32_t c = 0; c < 8; ++c) owners[c] = c % 2 == 0 ? "" : "gone";
  PrefetchLanes lanes(Range(0, 8), [&](uint32_t c) { return owners[c]; });
  EXPECT_EQ(lanes.Take(PrefetchLanes::kOwn), 0u);
  EXPECT_EQ(lanes.Take(PrefetchLanes::kTheirs), 1u);
  // "gone" left: its chunks are this node's now, and it reads them itself.
  for (auto& [c, o] : owners) o = "";
  lanes.Resplit();
  EXPECT_EQ(lanes.Left(PrefetchLanes::kTheirs), 0u);
  EXPECT_EQ(Drain(lanes, PrefetchLanes::kOwn), Range(2, 8));  // 0 and 1 were taken
  EXPECT_TRUE(lanes.Empty());
}

TEST(PrefetchLanesTest, ClearDropsWhatIsLeft) {
  PrefetchLanes lanes(Range(0, 6), [](uint32_t c) { return c < 3 ? "" : "a"; });
  lanes.Take(PrefetchLanes::kOwn);
  lanes.Clear();
  EXPECT_TRUE(lanes.Empty());
  lanes.Resplit();
  EXPECT_TRUE(lanes.Empty());
}

}  // namespace
}  // namespace strata::cache
