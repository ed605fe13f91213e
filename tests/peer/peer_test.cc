// The peer library in one process: rendezvous ownership and set-aside,
// chunks on the wire (checksums, zstd where it pays), and nodes made of a
// real chunk store, peer service and client talking gRPC on 127.0.0.x:
// leases, single fetches under concurrency, lying and dead peers, mutual
// TLS. The origin is a counting function at the fetcher's seam.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/unique_fd.h"
#include "cache/chunk_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "peer.grpc.pb.h"
#include "peer/membership.h"
#include "peer/peer_client.h"
#include "peer/peer_service.h"
#include "peer/wire.h"
#include "tests/util/fake_clock.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/subprocess.h"
#include "tests/util/tcp_proxy.h"
#include "tests/util/test_util.h"

namespace strata::peer {
namespace {

using strata::testing::FakeClock;
using strata::testing::TempDir;
using ::testing::HasSubstr;

// --- membership ---------------------------------------------------------

std::unique_ptr<Membership> Members(const std::string& self, std::vector<std::string> all,
                                    Clock* clock = RealClock()) {
  MembershipOptions o;
  o.self = self;
  o.peers = std::move(all);
  o.clock = clock;
  auto m = Membership::Start(std::move(o));
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

const std::vector<std::string> kFour = {"127.0.0.1:7001", "127.0.0.2:7001", "127.0.0.3:7001",
                                        "127.0.0.4:7001"};

TEST(MembershipTest, EveryNodeAgreesOnEachChunksOwnerAndOwnersShareTheWork) {
  std::vector<std::unique_ptr<Membership>> nodes;
  for (const auto& self : kFour) nodes.push_back(Members(self, kFour));
  std::map<std::string, int> owned;
  for (uint32_t i = 0; i < 2000; ++i) {
    std::string owner = nodes[0]->Candidates("http://o/model@\"e1\"", i, 1)[0].address;
    for (const auto& n : nodes) {
      auto c = n->Candidates("http://o/model@\"e1\"", i, 4);
      ASSERT_EQ(c.size(), 4u);
      EXPECT_EQ(c[0].address, owner) << "chunk " << i;
      EXPECT_EQ(c[0].self, owner == n->self());
    }
    ++owned[owner];
  }
  ASSERT_EQ(owned.size(), 4u);
  for (const auto& [address, n] : owned) {
    EXPECT_GT(n, 380) << address;  // 500 each on average
    EXPECT_LT(n, 620) << address;
  }
}

TEST(MembershipTest, AMemberLeavingMovesOnlyItsOwnChunks) {
  auto four = Members(kFour[0], kFour);
  auto three = Members(kFour[0], {kFour[0], kFour[1], kFour[2]});
  for (uint32_t i = 0; i < 1000; ++i) {
    std::string before = four->Candidates("k", i, 1)[0].address;
    std::string after = three->Candidates("k", i, 1)[0].address;
    if (before != kFour[3]) {
      EXPECT_EQ(before, after) << "chunk " << i;
    }
  }
}

TEST(MembershipTest, AFailedPeerIsSetAsideForABackoffThatGrowsAndThenTriedAgain) {
  FakeClock clock;
  auto m = Members(kFour[0], kFour, &clock);
  // A chunk kFour[1] owns.
  uint32_t idx = 0;
  while (m->Candidates("k", idx, 1)[0].address != kFour[1]) ++idx;
  const uint64_t all_live = m->Epoch();
  m->Failed(kFour[1]);
  EXPECT_NE(m->Candidates("k", idx, 1)[0].address, kFour[1]);
  EXPECT_NE(m->Epoch(), all_live);  // owners changed: prefetches split their chunks again
  clock.Advance(absl::Milliseconds(1100));
  EXPECT_EQ(m->Candidates("k", idx, 1)[0].address, kFour[1]);
  EXPECT_EQ(m->Epoch(), all_live);
  m->Failed(kFour[1]);  // the second failure in a row: two seconds
  clock.Advance(absl::Milliseconds(1100));
  EXPECT_NE(m->Candidates("k", idx, 1)[0].address, kFour[1]);
  auto stats = m->Stats();
  ASSERT_EQ(stats.size(), 3u);
  EXPECT_TRUE(stats[0].set_aside);
  EXPECT_EQ(stats[0].failures, 2u);
  clock.Advance(absl::Seconds(1));
  m->Succeeded(kFour[1]);
  EXPECT_EQ(m->Candidates("k", idx, 1)[0].address, kFour[1]);
  EXPECT_EQ(m->Stats()[0].failures, 0u);
}

TEST(MembershipTest, TheServiceNameListsMembersAtOurPortWithoutOurselves) {
  std::vector<std::string> answer = {"10.0.0.5", "10.0.0.6", "10.0.0.7"};
  bool fail = false;
  MembershipOptions o;
  o.self = "10.0.0.5:9470";
  o.service = "strata-peers.strata-system.svc.cluster.local";
  o.resolve_interval = absl::Hours(1);  // only Refresh() below
  o.resolve = [&](const std::string& name) -> absl::StatusOr<std::vector<std::string>> {
    EXPECT_EQ(name, "strata-peers.strata-system.svc.cluster.local");
    if (fail) return absl::UnavailableError("no DNS");
    return answer;
  };
  auto m = Membership::Start(std::move(o));
  ASSERT_TRUE(m.ok()) << m.status();
  auto addresses = [&] {
    std::vector<std::string> out;
    for (const auto& s : (*m)->Stats()) out.push_back(s.address);
    return out;
  };
  EXPECT_THAT(addresses(), ::testing::ElementsAre("10.0.0.6:9470", "10.0.0.7:9470"));
  const uint64_t before = (*m)->Epoch();
  answer = {"10.0.0.5", "10.0.0.7", "10.0.0.8", "fe80::1"};
  (*m)->Refresh();
  EXPECT_THAT(addresses(),
              ::testing::ElementsAre("10.0.0.7:9470", "10.0.0.8:9470", "[fe80::1]:9470"));
  const uint64_t after = (*m)->Epoch();
  EXPECT_NE(after, before);
  fail = true;  // a DNS failure is not everyone leaving
  (*m)->Refresh();
  EXPECT_EQ(addresses().size(), 3u);
  EXPECT_EQ((*m)->Epoch(), after);
}

TEST(MembershipTest, AddressesAreChecked) {
  for (const char* bad :
       {"", "host", "host:", "host:0", "host:70000", "a b:1", "::1:80", "[::1:80", "host:port"}) {
    EXPECT_FALSE(CheckPeerAddress(bad).ok()) << bad;
  }
  for (const char* good : {"127.0.0.1:9470", "[::1]:9470", "node-1.example:1"}) {
    EXPECT_TRUE(CheckPeerAddress(good).ok()) << good;
  }
  MembershipOptions o;
  o.self = "127.0.0.1:1";
  o.peers = {"127.0.0.2"};
  EXPECT_FALSE(Membership::Start(o).ok());
}

// --- the wire -------------------------------------------------------------

struct Captured {
  v1::ChunkHeader header;
  std::vector<grpc::ByteBuffer> pieces;  // FetchResponses, as they go on the wire
  uint64_t wire = 0;
};

// Encodes `chunk` as SendChunk does, read piece by piece from memory.
Captured Encode(const std::string& chunk, const SendOptions& o, SendReport* rep = nullptr) {
  Captured c;
  SendReport r;
  auto pool = PiecePool::Create();
  absl::Status st = EncodeChunk(
      chunk.size(), ChunkChecksum(chunk),
      [&](size_t offset, absl::Span<char> out) { return CopyOut(chunk, offset, out); }, o, *pool,
      [&](const v1::ChunkHeader& h) {
        c.header = h;
        return true;
      },
      [&](OutPiece p) {
        c.wire += p.size;
        c.pieces.push_back(PieceMessage(v1::FetchResponse::kPieceFieldNumber, std::move(p)));
        return true;
      },
      &r);
  EXPECT_TRUE(st.ok()) << st;
  if (rep) *rep = r;
  return c;
}

absl::Status Decode(const Captured& c, std::string& out) {
  ChunkReceiver rx(absl::MakeSpan(out));
  absl::Status st = rx.Begin(c.header);
  for (const auto& p : c.pieces) {
    if (!st.ok()) break;
    st = rx.AddFrom<v1::FetchResponse>(p);
  }
  return st.ok() ? rx.Finish() : st;
}

// A message's bytes on the wire, and a message of given bytes.
std::string WireBytes(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string s;
  for (const auto& sl : slices) s.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return s;
}
grpc::ByteBuffer Message(const std::string& bytes) {
  grpc::Slice s(bytes);
  return grpc::ByteBuffer(&s, 1);
}

std::string Text(size_t n) {
  std::string s;
  for (int i = 0; s.size() < n; ++i) absl::StrAppend(&s, "token ", i % 977, " of the dataset; ");
  s.resize(n);
  return s;
}

std::string Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, 8);
  }
  return s;
}

TEST(WireTest, CompressionIsDecidedByWhatItSavesAgainstWhatItCosts) {
  EXPECT_FALSE(ShouldCompress(0.3, 0, 400e6));      // link not measured: taken as fast
  EXPECT_FALSE(ShouldCompress(0.3, 10e9, 400e6));   // 10 GB/s: compressing is the bottleneck
  EXPECT_TRUE(ShouldCompress(0.3, 100e6, 400e6));   // 100 MB/s: 280 MB/s effective
  EXPECT_FALSE(ShouldCompress(0.95, 10e6, 400e6));  // random bytes never pay
  EXPECT_FALSE(ShouldCompress(0.5, 250e6, 400e6));  // saves 50%, but 200 MB/s < 250
}

TEST(WireTest, TextOverASlowLinkGoesCompressedAndComesBackWhole) {
  std::string chunk = Text(4 << 20);
  SendReport rep;
  Captured c = Encode(chunk, {.zstd = true, .link_bytes_per_second = 50'000'000}, &rep);
  EXPECT_TRUE(rep.compressed);
  EXPECT_EQ(c.header.codec(), v1::CODEC_ZSTD);
  EXPECT_LT(c.wire, chunk.size() / 4);
  EXPECT_EQ(c.pieces.size(), 4u);
  std::string out(chunk.size(), '\0');
  ASSERT_TRUE(Decode(c, out).ok());
  EXPECT_TRUE(out == chunk);
}

TEST(WireTest, WeightsAndFastOrUnmeasuredLinksGoRaw) {
  std::string weights = Random(4 << 20, 7);
  EXPECT_EQ(Encode(weights, {.zstd = true, .link_bytes_per_second = 50'000'000}).header.codec(),
            v1::CODEC_NONE);
  std::string text = Text(4 << 20);
  EXPECT_EQ(Encode(text, {.zstd = true, .link_bytes_per_second = 20'000'000'000}).header.codec(),
            v1::CODEC_NONE);
  EXPECT_EQ(Encode(text, {.zstd = true, .link_bytes_per_second = 0}).header.codec(),
            v1::CODEC_NONE);
  EXPECT_EQ(Encode(text, {.zstd = false, .link_bytes_per_second = 1000}).header.codec(),
            v1::CODEC_NONE);
  Captured c = Encode(weights, {});
  EXPECT_EQ(c.wire, weights.size());
  std::string out(weights.size(), '\0');
  ASSERT_TRUE(Decode(c, out).ok());
  EXPECT_TRUE(out == weights);
}

TEST(WireTest, EveryKindOfBadChunkIsDataLossNeverBytes) {
  std::string chunk = Random(3 << 20, 9);
  for (bool zstd : {false, true}) {
    std::string src = zstd ? Text(3 << 20) : chunk;
    Captured good = Encode(src, {.zstd = zstd, .link_bytes_per_second = zstd ? 1000u : 0u});
    ASSERT_EQ(good.header.codec() == v1::CODEC_ZSTD, zstd);
    std::string out(src.size(), '\0');

    Captured flipped = good;  // a bit flipped on the way, in the piece's bytes
    std::string d = WireBytes(flipped.pieces[1]);
    d[d.size() / 2] ^= 0x10;
    flipped.pieces[1] = Message(d);
    absl::Status st = Decode(flipped, out);
    EXPECT_TRUE(absl::IsDataLoss(st)) << st;

    Captured lying = good;  // a sender whose checksum is not of these bytes
    lying.header.set_xxh3_64(good.header.xxh3_64() ^ 1);
    st = Decode(lying, out);
    EXPECT_TRUE(absl::IsDataLoss(st)) << st;
    EXPECT_THAT(st.message(), HasSubstr("checksum"));

    Captured shorter = good;  // a piece missing
    shorter.pieces.pop_back();
    EXPECT_TRUE(absl::IsDataLoss(Decode(shorter, out)));

    Captured longer = good;  // a piece too many
    longer.pieces.push_back(good.pieces[0]);
    EXPECT_TRUE(absl::IsDataLoss(Decode(longer, out)));

    std::string small(src.size() - 4096, '\0');  // a chunk of another length
    EXPECT_TRUE(absl::IsDataLoss(Decode(good, small)));
  }
  Captured c = Encode(chunk, {});
  c.header.set_codec(static_cast<v1::Codec>(7));
  std::string out(chunk.size(), '\0');
  EXPECT_TRUE(absl::IsInvalidArgument(Decode(c, out)));
}

TEST(WireTest, AChunkIsReadAPieceAtATimeAndAFailedReadStopsTheSend) {
  std::string chunk = Random(3 << 20, 11);
  std::vector<std::pair<size_t, size_t>> reads;
  int pieces = 0;
  auto pool = PiecePool::Create();
  absl::Status st = EncodeChunk(
      chunk.size(), ChunkChecksum(chunk),
      [&](size_t offset, absl::Span<char> out) -> absl::Status {
        reads.emplace_back(offset, out.size());
        if (offset >= 2 * kPieceBytes) return absl::DataLossError("the disk lost it");
        return CopyOut(chunk, offset, out);
      },
      {}, *pool, [](const v1::ChunkHeader&) { return true; },
      [&](OutPiece) {
        ++pieces;
        return true;
      },
      nullptr);
  EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  EXPECT_THAT(st.message(), HasSubstr("the disk lost it"));
  EXPECT_EQ(pieces, 2) << "nothing is sent after the failed read";
  std::vector<std::pair<size_t, size_t>> want = {
      {0, kPieceBytes}, {kPieceBytes, kPieceBytes}, {2 * kPieceBytes, kPieceBytes}};
  EXPECT_EQ(reads, want) << "one piece at a time, never the whole chunk";
}

// The receiver reads a piece encoded as PieceMessage encodes it straight
// from the message's bytes; any other valid encoding of the same piece (a
// peer built from the proto by other means) is parsed as a message, with
// the same result; a malformed one is an error, never bytes.
TEST(WireTest, APieceIsTakenTheSameHoweverItIsValidlyEncoded) {
  const std::string chunk = Random(kPieceBytes, 13);
  Captured c = Encode(chunk, {});
  ASSERT_EQ(c.pieces.size(), 1u);
  const std::string plain = WireBytes(c.pieces[0]);
  v1::FetchResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(plain)) << "PieceMessage is a FetchResponse";
  ASSERT_TRUE(parsed.has_piece());
  EXPECT_EQ(parsed.piece().raw_length(), kPieceBytes);
  EXPECT_TRUE(parsed.piece().data() == chunk);
  EXPECT_EQ(parsed.SerializeAsString(), plain) << "the encoding protobuf itself writes";

  auto take = [&](const std::string& message) {
    std::string out(chunk.size(), '\0');
    ChunkReceiver rx(absl::MakeSpan(out));
    absl::Status st = rx.Begin(c.header);
    if (st.ok()) st = rx.AddFrom<v1::FetchResponse>(Message(message));
    if (st.ok()) st = rx.Finish();
    if (st.ok() && out != chunk) st = absl::InternalError("other bytes");
    return st;
  };
  EXPECT_TRUE(take(plain).ok());
  // An unknown field after the piece (a newer peer's).
  EXPECT_TRUE(take(plain + std::string("\x78\x01", 2)).ok());
  // The piece's fields the other way round.
  v1::Piece length_only;
  length_only.set_raw_length(kPieceBytes);
  v1::Piece data_only;
  data_only.set_data(chunk);
  const std::string inner = length_only.SerializeAsString() + data_only.SerializeAsString();
  v1::FetchResponse wrapper;
  ASSERT_TRUE(wrapper.mutable_piece()->ParseFromString(inner));
  std::string reversed = "\x12";  // field 2 (piece), length-delimited
  for (size_t n = inner.size(); n != 0; n >>= 7)
    reversed += static_cast<char>((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
  reversed += inner;
  EXPECT_TRUE(take(reversed).ok());
  // Cut short, or not a piece at all.
  absl::Status st = take(plain.substr(0, plain.size() - 100));
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  v1::FetchResponse lease;
  lease.mutable_lease()->set_timeout_ms(5);
  st = take(lease.SerializeAsString());
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_THAT(st.message(), HasSubstr("expected a piece"));
}

TEST(WireTest, APiecesBufferGoesBackToItsPoolWhenTheTransportLetsGo) {
  auto pool = PiecePool::Create(/*keep=*/1);
  const char* first;
  {
    PiecePool::Buffer b = pool->Take();
    first = b.data();
    std::memset(b.data(), 'x', 10);
    grpc::ByteBuffer m =
        PieceMessage(v1::FetchResponse::kPieceFieldNumber, OutPiece{std::move(b), 10, 10});
    grpc::ByteBuffer copy(m);  // what a transport holds after the write
    EXPECT_EQ(pool->idle(), 0u);
    m.Clear();
    EXPECT_EQ(pool->idle(), 0u) << "still held by the copy";
  }
  EXPECT_EQ(pool->idle(), 1u);
  EXPECT_EQ(pool->Take().data(), first) << "reused, not allocated again";
  { PiecePool::Buffer a = pool->Take(), b = pool->Take(); }
  EXPECT_EQ(pool->idle(), 1u) << "the pool keeps no more than it was told";
}

// --- nodes ----------------------------------------------------------------

constexpr uint32_t kChunk = 1 << 20;

// The memory tier of the nodes' stores (a test that must see the disk sets
// it to 0 before it starts its nodes).
uint64_t node_memory_bytes = cache::StoreOptions{}.memory_bytes;

// A node: a chunk store, the peer service on its own 127.0.0.x address,
// and a client that knows every node of the cluster.
struct Node {
  TempDir dir;
  std::unique_ptr<cache::ChunkStore> store;
  // One read-ahead thread: hints are read in the order they came.
  PeerService service{*store_for_ctor(), {.read_ahead_threads = 1}};
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<Membership> members;
  std::unique_ptr<PeerClient> client;
  std::string address;

  cache::ChunkStore* store_for_ctor() {
    cache::StoreOptions so;
    so.dir = dir.path() + "/cache";
    so.chunk_size = kChunk;
    so.capacity_bytes = 1ull << 30;
    so.background_work = false;
    so.memory_bytes = node_memory_bytes;
    auto s = cache::ChunkStore::Open(so);
    EXPECT_TRUE(s.ok()) << s.status();
    store = std::move(*s);
    return store.get();
  }
};

class PeersTest : public ::testing::Test {
 protected:
  // Starts `n` nodes on 127.0.0.1..n with `creds` (insecure by default).
  void StartNodes(int n, std::vector<PeerCredentials> creds = {},
                  PeerClientOptions co = {.timeout = absl::Seconds(10)}) {
    int port = strata::testing::FreePort();
    std::vector<std::string> all;
    for (int i = 0; i < n; ++i) all.push_back(absl::StrCat("127.0.0.", i + 1, ":", port));
    for (int i = 0; i < n; ++i) {
      auto node = std::make_unique<Node>();
      node->address = all[i];
      PeerCredentials c = i < static_cast<int>(creds.size()) ? creds[i] : Insecure();
      auto s = StartPeerServer(node->address, c, node->service);
      ASSERT_TRUE(s.ok()) << s.status();
      node->server = std::move(*s);
      node->members = Members(node->address, all);
      node->client = std::make_unique<PeerClient>(*node->members, c, co);
      nodes_.push_back(std::move(node));
    }
  }
  void TearDown() override {
    for (auto& n : nodes_) {
      if (n->server) n->server->Shutdown(std::chrono::system_clock::now());
    }
  }
  static PeerCredentials Insecure() {
    return {grpc::InsecureServerCredentials(), grpc::InsecureChannelCredentials(), ""};
  }

  // The first chunk of `key` that `m` asks `address` for first.
  static uint32_t FirstOwnedBy(const Membership& m, const std::string& address,
                               const std::string& key) {
    for (uint32_t i = 0; i < 64; ++i) {
      if (m.Candidates(key, i, 1)[0].address == address) return i;
    }
    ADD_FAILURE() << "no chunk of " << key << " is owned by " << address;
    return 0;
  }

  // The index of a chunk of `key` whose owner is node `owner`.
  uint32_t ChunkOwnedBy(int owner, const std::string& key, uint32_t chunks) {
    for (uint32_t i = 0; i < chunks; ++i) {
      if (nodes_[0]->members->Candidates(key, i, 1)[0].address == nodes_[owner]->address) return i;
    }
    ADD_FAILURE() << "no chunk of " << key << " is owned by node " << owner;
    return 0;
  }

  // Reads chunk `idx` of `key` on `node` as the fetcher does: the node's
  // store first, whose one fill per chunk asks the peers, which read the
  // counting origin when that is their answer.
  absl::StatusOr<cache::ChunkFrom> Read(int node, const std::string& key, uint32_t idx,
                                        std::string* out) {
    Node& n = *nodes_[node];
    if (absl::Status st = n.store->Register({key, kObject, "test", kChunk}); !st.ok()) return st;
    std::optional<cache::ChunkFrom> from;
    auto r = n.store->Fill(key, idx, [&](absl::Span<char> o) -> absl::Status {
      auto f = n.client->Fetch({key, idx, kObject, kChunk, {}}, o,
                               [&](absl::Span<char> oo) { return FromOrigin(key, idx, oo); });
      if (!f.ok()) return f.status();
      from = *f;
      return absl::OkStatus();
    });
    if (!r.ok()) return r.status();
    out->assign(kChunk, '\0');
    auto rr = n.store->Read(key, uint64_t{idx} * kChunk, absl::MakeSpan(*out));
    if (!rr.ok()) return rr.status();
    if (!rr->missing.empty()) return absl::InternalError("not in the store after its fill");
    return from.value_or(cache::ChunkFrom::kOrigin);  // none: a fill of this node's did it
  }
  // The counting origin: chunk `idx` of `key` into `out`.
  absl::Status FromOrigin(const std::string& key, uint32_t idx, absl::Span<char> out) {
    ++origin_reads_;
    std::string b = Bytes(key, idx);
    std::memcpy(out.data(), b.data(), out.size());
    return absl::OkStatus();
  }
  // The peer port of node `i`.
  int Port(int i) const {
    const std::string& a = nodes_[i]->address;
    return std::stoi(a.substr(a.rfind(':') + 1));
  }

  static std::string Bytes(const std::string& key, uint32_t idx) {
    return strata::testing::Pattern(std::hash<std::string>()(key), idx, kChunk);
  }

  static constexpr uint64_t kObject = 64ull * kChunk;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::atomic<int> origin_reads_{0};
};

TEST_F(PeersTest, TheFirstAskerFetchesUnderTheOwnersLeaseAndTheNextGetsItFromTheOwner) {
  StartNodes(3);
  const std::string key = "http://127.0.0.1:1/model.bin@\"v1\"";
  uint32_t idx = ChunkOwnedBy(0, key, 64);
  std::string got;
  auto from = Read(1, key, idx, &got);
  ASSERT_TRUE(from.ok()) << from.status();
  EXPECT_EQ(*from, cache::ChunkFrom::kOrigin);  // node 1 held the lease
  EXPECT_EQ(origin_reads_, 1);
  EXPECT_TRUE(got == Bytes(key, idx));
  // The owner keeps what the lease holder sent it.
  auto missing = nodes_[0]->store->MissingChunks(key, uint64_t{idx} * kChunk, kChunk);
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->empty());
  from = Read(2, key, idx, &got);
  ASSERT_TRUE(from.ok()) << from.status();
  EXPECT_EQ(*from, cache::ChunkFrom::kPeer);
  EXPECT_EQ(origin_reads_, 1);
  EXPECT_TRUE(got == Bytes(key, idx));
  EXPECT_EQ(nodes_[0]->service.Stats().leases_granted, 1u);
  EXPECT_EQ(nodes_[0]->service.Stats().chunks_served, 1u);
  EXPECT_EQ(nodes_[1]->client->Stats().leased_chunks, 1u);
}

TEST_F(PeersTest, ManyNodesAskingAtOnceCostTheOriginOneFetchPerChunk) {
  StartNodes(4);
  const std::string key = "sha256:0123";
  std::atomic<int> wrong{0}, errors{0};
  std::vector<std::thread> readers;
  for (int n = 0; n < 4; ++n) {
    for (int t = 0; t < 3; ++t) {
      readers.emplace_back([&, n, t] {
        std::string got;
        for (uint32_t i = 0; i < 16; ++i) {
          uint32_t idx = (i + t * 5) % 16;
          auto from = Read(n, key, idx, &got);
          if (!from.ok())
            ++errors;
          else if (got != Bytes(key, idx))
            ++wrong;
        }
      });
    }
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(wrong, 0);
  // Every chunk was fetched once, by its owner or under its lease.
  EXPECT_EQ(origin_reads_, 16);
  uint64_t served = 0;
  for (auto& n : nodes_) served += n->service.Stats().chunks_served;
  EXPECT_GT(served, 0u);
}

TEST_F(PeersTest, ANodeThatJoinsGetsTheChunksItNowOwnsFromTheirPreviousOwner) {
  StartNodes(2);
  const std::string key = "sha256:joined";
  std::string got;
  for (int n = 0; n < 2; ++n) {
    for (uint32_t i = 0; i < 16; ++i) ASSERT_TRUE(Read(n, key, i, &got).ok());
  }
  ASSERT_EQ(origin_reads_, 16);
  // A third node joins: it owns a third of the chunks now, which it has
  // never seen; their previous owner is its runner-up.
  std::string self = absl::StrCat("127.0.0.3:", Port(0));
  auto m = Members(self, {nodes_[0]->address, nodes_[1]->address, self});
  PeerClient joiner(*m, Insecure(), {.timeout = absl::Seconds(10)});
  int owned = 0;
  for (uint32_t i = 0; i < 16; ++i) {
    owned += m->Candidates(key, i, 1)[0].self;
    got.assign(kChunk, '\0');
    auto from =
        joiner.Fetch({key, i, kObject, kChunk, {}}, absl::MakeSpan(got), [&](absl::Span<char>) {
          ++origin_reads_;
          return absl::UnavailableError("the origin is not to be asked");
        });
    ASSERT_TRUE(from.ok()) << from.status();
    EXPECT_EQ(*from, cache::ChunkFrom::kPeer);
    EXPECT_TRUE(got == Bytes(key, i));
  }
  ASSERT_GT(owned, 0);
  EXPECT_EQ(origin_reads_, 16);
  EXPECT_EQ(joiner.Stats().runner_up_chunks, static_cast<uint64_t>(owned));
}

// An asker that says which of the owner's chunks it will ask for next (a
// prefetch) finds them in the owner's memory when it asks: the owner read
// them from its disk while it served the first.
TEST_F(PeersTest, TheChunksAnAskerSaysComeNextAreReadAheadByTheOwner) {
  node_memory_bytes = 4 * kChunk + (64 << 10);  // the last few chunks stored or read
  StartNodes(2);
  node_memory_bytes = cache::StoreOptions{}.memory_bytes;
  const std::string key = "http://o/next@\"v\"";
  std::vector<uint32_t> owned;  // by node 0, in order
  for (uint32_t i = 0; i < 64 && owned.size() < 12; ++i) {
    if (nodes_[1]->members->Candidates(key, i, 1)[0].address == nodes_[0]->address) {
      owned.push_back(i);
    }
  }
  ASSERT_EQ(owned.size(), 12u);
  cache::ChunkStore& owner = *nodes_[0]->store;
  ASSERT_TRUE(owner.Register({key, kObject, "test", kChunk}).ok());
  for (uint32_t i : owned) {
    std::string b = Bytes(key, i);
    ASSERT_TRUE(owner.WriteChunk(key, i, absl::MakeSpan(b)).ok());
  }
  // The first three are on disk only now.
  auto ask = [&](uint32_t i, std::vector<uint32_t> next) {
    std::string got(kChunk, '\0');
    auto from = nodes_[1]->client->Fetch({key, i, kObject, kChunk, next}, absl::MakeSpan(got),
                                         [&](absl::Span<char> o) { return FromOrigin(key, i, o); });
    ASSERT_TRUE(from.ok()) << from.status();
    EXPECT_EQ(*from, cache::ChunkFrom::kPeer);
    EXPECT_TRUE(got == Bytes(key, i)) << "chunk " << i;
  };
  const uint64_t disk_reads = owner.Stats().read_hits;
  ask(owned[0], {owned[1], owned[2]});
  ASSERT_TRUE(
      strata::testing::Eventually([&] { return nodes_[0]->service.Stats().read_ahead == 2; }));
  EXPECT_EQ(nodes_[0]->service.Stats().read_ahead_queued, 2u);
  EXPECT_EQ(owner.Stats().read_hits, disk_reads + 3);
  const uint64_t memory_hits = owner.Stats().memory_hits;
  ask(owned[1], {});
  ask(owned[2], {});
  EXPECT_EQ(owner.Stats().read_hits, disk_reads + 3) << "the next two came from memory";
  EXPECT_EQ(owner.Stats().memory_hits, memory_hits + 2);
  // Hints are checked: past the object's end and the chunk asked for
  // itself are passed over, and one this node lacks is not fetched (it is
  // handled before the last, which is read).
  uint32_t lacking = 0;
  while (std::find(owned.begin(), owned.end(), lacking) != owned.end()) ++lacking;
  ask(owned[3], {static_cast<uint32_t>(kObject / kChunk), owned[3], lacking, owned[4]});
  ASSERT_TRUE(
      strata::testing::Eventually([&] { return nodes_[0]->service.Stats().read_ahead == 3; }));
  EXPECT_EQ(owner.Lookup(key)->chunks_present, owned.size());
  EXPECT_EQ(origin_reads_, 0);
}

TEST_F(PeersTest, BytesCorruptedOnTheWayCostARefetchNeverAWrongByte) {
  StartNodes(2);
  const std::string key = "http://o/w@\"v\"";
  // Node 1 reaches node 0 through a proxy that flips a bit in the middle
  // of the next chunk it carries (past TCP's checksum, inside HTTP/2's
  // payload: only Strata's own checksum can see it).
  strata::testing::TcpProxy proxy("127.0.0.9", "127.0.0.1", Port(0));
  ASSERT_TRUE(proxy.ok());
  std::string via = absl::StrCat("127.0.0.9:", proxy.port());
  auto members = Members(nodes_[1]->address, {nodes_[1]->address, via});
  PeerClient client(*members, Insecure(), {.timeout = absl::Seconds(10)});
  int tried = 0, from_peer = 0;
  for (uint32_t i = 0; i < 64 && tried < 4; ++i) {
    if (members->Candidates(key, i, 1)[0].address != via) continue;
    // Node 0 has the chunk.
    std::string b = Bytes(key, i);
    ASSERT_TRUE(nodes_[0]->store->Register({key, kObject, "test", kChunk}).ok());
    ASSERT_TRUE(nodes_[0]->store->WriteChunk(key, i, absl::MakeSpan(b)).ok());
    if (tried == 0) proxy.FlipMarker(b.substr(kChunk / 2, 16), 1);
    std::string got(kChunk, '\0');
    int before = origin_reads_;
    auto from = client.Fetch({key, i, kObject, kChunk, {}}, absl::MakeSpan(got),
                             [&](absl::Span<char> o) { return FromOrigin(key, i, o); });
    ASSERT_TRUE(from.ok()) << from.status();
    EXPECT_TRUE(got == b) << "chunk " << i;
    if (tried == 0) {
      // Detected: the peer is set aside and this node reads the origin.
      EXPECT_EQ(*from, cache::ChunkFrom::kOrigin);
      EXPECT_EQ(origin_reads_ - before, 1);
      members->Succeeded(via);  // as if its backoff had passed
    } else {
      from_peer += *from == cache::ChunkFrom::kPeer;
    }
    ++tried;
  }
  ASSERT_EQ(tried, 4);
  EXPECT_EQ(proxy.flips(), 1);
  EXPECT_EQ(from_peer, 3);
  auto stats = client.Stats();
  ASSERT_EQ(stats.peers.size(), 1u);
  EXPECT_EQ(stats.peers[0].corrupt, 1u);
  EXPECT_EQ(stats.peers[0].chunks, 3u);
}

TEST_F(PeersTest, AChunkThatRotsOnTheOwnersDiskAfterItsCheckIsCaughtByTheOwner) {
  // The owner checks a chunk it reads from its file against the checksum it
  // stored it with: a rotten one is dropped, not sent, and fetched again.
  node_memory_bytes = 0;  // the owner reads its disk, not its memory
  StartNodes(2);
  node_memory_bytes = cache::StoreOptions{}.memory_bytes;
  const std::string key = "http://o/rot@\"v\"";
  uint32_t i = ChunkOwnedBy(0, key, 64);
  std::string b = Bytes(key, i);
  ASSERT_TRUE(nodes_[0]->store->Register({key, kObject, "test", kChunk}).ok());
  ASSERT_TRUE(nodes_[0]->store->WriteChunk(key, i, absl::MakeSpan(b)).ok());
  std::string file;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(nodes_[0]->dir.path() + "/cache/objects")) {
    if (e.is_regular_file()) file = e.path();
  }
  ASSERT_FALSE(file.empty());
  {
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_GE(fd.get(), 0);
    char rotten = static_cast<char>(b[kChunk / 2] ^ 0x04);
    ASSERT_EQ(::pwrite(fd.get(), &rotten, 1, static_cast<off_t>(uint64_t{i} * kChunk + kChunk / 2)),
              1);
  }
  std::string got;
  auto from = Read(1, key, i, &got);
  ASSERT_TRUE(from.ok()) << from.status();
  EXPECT_EQ(*from, cache::ChunkFrom::kOrigin);
  EXPECT_EQ(origin_reads_, 1);
  EXPECT_TRUE(got == b) << "the asker stored and served the origin's bytes";
  EXPECT_EQ(nodes_[0]->store->Stats().checksum_failures, 1u);
  auto stats = nodes_[1]->client->Stats();
  ASSERT_EQ(stats.peers.size(), 1u);
  EXPECT_EQ(stats.peers[0].corrupt, 0u) << "the owner sent nothing wrong";
  // The asker's fetch refilled the owner (it held the lease): the owner
  // now has the right bytes.
  auto again = nodes_[0]->store->ReadChunk(key, i);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->bytes->view() == b);
}

TEST_F(PeersTest, ALeaseHolderThatSendsBadBytesFailsTheFillAndTheNextWaiterFetches) {
  StartNodes(1);
  const std::string key = "http://o/x@\"v\"";
  auto m = Members("127.0.0.2:1", {nodes_[0]->address});
  const uint32_t idx = FirstOwnedBy(*m, nodes_[0]->address, key);
  auto channel = grpc::CreateChannel(nodes_[0]->address, grpc::InsecureChannelCredentials());
  auto stub = v1::Peer::NewStub(channel);
  grpc::ClientContext ctx;
  auto liar = stub->Fetch(&ctx);
  v1::FetchRequest want;
  v1::ChunkRef* c = want.mutable_want()->mutable_chunk();
  c->set_key(key);
  c->set_index(idx);
  c->set_object_size(kObject);
  c->set_chunk_size(kChunk);
  want.mutable_want()->set_can_fetch(true);
  ASSERT_TRUE(liar->Write(want));
  v1::FetchResponse resp;
  ASSERT_TRUE(liar->Read(&resp));
  ASSERT_TRUE(resp.has_lease());
  // An honest asker comes while the liar holds the lease, and waits.
  std::string got(kChunk, '\0');
  absl::StatusOr<cache::ChunkFrom> honest = absl::UnknownError("not run");
  PeerClient client(*m, Insecure(), {.timeout = absl::Seconds(10), .max_candidates = 1});
  std::thread waiter([&] {
    honest = client.Fetch({key, idx, kObject, kChunk, {}}, absl::MakeSpan(got),
                          [&](absl::Span<char> o) { return FromOrigin(key, idx, o); });
  });
  for (int i = 0; i < 1000 && nodes_[0]->service.Stats().wants < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(nodes_[0]->service.Stats().wants, 2u);
  // The liar's bytes do not match the checksum it sends with them.
  std::string bad = Bytes(key, idx);
  v1::FetchRequest h;
  h.mutable_header()->set_length(kChunk);
  h.mutable_header()->set_xxh3_64(12345);
  ASSERT_TRUE(liar->Write(h));
  for (size_t off = 0; off < bad.size(); off += kPieceBytes) {
    v1::FetchRequest p;
    p.mutable_piece()->set_data(bad.substr(off, kPieceBytes));
    p.mutable_piece()->set_raw_length(kPieceBytes);
    liar->Write(p);
  }
  liar->WritesDone();
  grpc::Status st = liar->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << st.error_message();
  waiter.join();
  ASSERT_TRUE(honest.ok()) << honest.status();
  EXPECT_EQ(*honest, cache::ChunkFrom::kOrigin);  // the next lease was its
  EXPECT_TRUE(got == Bytes(key, idx));
  EXPECT_EQ(origin_reads_, 1);
  std::string stored(kChunk, '\0');
  auto r = nodes_[0]->store->Read(key, uint64_t{idx} * kChunk, absl::MakeSpan(stored));
  ASSERT_TRUE(r.ok() && r->missing.empty());
  EXPECT_TRUE(stored == Bytes(key, idx));
  EXPECT_EQ(nodes_[0]->service.Stats().leases_failed, 1u);
  EXPECT_EQ(nodes_[0]->service.Stats().leases_granted, 2u);
}

// A node whose daemon is gone refuses connections: that fails the ask at
// once, never after the connect timeout (here far longer than the test).
TEST_F(PeersTest, ADeadOwnerIsSetAsideAndTheReadGoesOn) {
  StartNodes(2, {}, {.timeout = absl::Seconds(10), .connect_timeout = absl::Hours(1)});
  const std::string key = "http://o/d@\"v\"";
  uint32_t idx = ChunkOwnedBy(0, key, 64);
  nodes_[0]->server->Shutdown(std::chrono::system_clock::now());
  nodes_[0]->server.reset();
  std::string got;
  auto from = Read(1, key, idx, &got);
  ASSERT_TRUE(from.ok()) << from.status();
  EXPECT_EQ(*from, cache::ChunkFrom::kOrigin);
  EXPECT_TRUE(got == Bytes(key, idx));
  EXPECT_TRUE(nodes_[1]->members->Stats()[0].set_aside);
  EXPECT_EQ(nodes_[1]->client->Stats().fallback_chunks, 1u);
}

// A partition that drops packets rather than refusing connections: only a
// deadline ends an exchange, after which the peer is set aside and the
// next reads do not wait on it at all.
TEST_F(PeersTest, ASilentPartitionCostsOneDeadlineNotARead) {
  StartNodes(1);
  const std::string key = "http://o/p@\"v\"";
  strata::testing::TcpProxy link("127.0.0.9", "127.0.0.1", Port(0));
  ASSERT_TRUE(link.ok());
  std::string via = absl::StrCat("127.0.0.9:", link.port());
  FakeClock clock;  // set-aside periods pass only when the test says
  MembershipOptions mo;
  mo.self = "127.0.0.2:1";
  mo.peers = {via};
  mo.clock = &clock;
  auto m = Membership::Start(mo);
  ASSERT_TRUE(m.ok());
  PeerClient client(
      **m, Insecure(),
      {.timeout = absl::Milliseconds(500), .connect_timeout = absl::Milliseconds(500)});
  std::vector<uint32_t> owned;
  for (uint32_t i = 0; i < 64 && owned.size() < 3; ++i) {
    if ((*m)->Candidates(key, i, 1)[0].address == via) owned.push_back(i);
  }
  ASSERT_EQ(owned.size(), 3u);
  auto fetch = [&](uint32_t i, cache::ChunkFrom* from) {
    std::string b = Bytes(key, i), got(kChunk, '\0');
    auto f = client.Fetch({key, i, kObject, kChunk, {}}, absl::MakeSpan(got),
                          [&](absl::Span<char> o) { return FromOrigin(key, i, o); });
    EXPECT_TRUE(f.ok()) << f.status();
    if (f.ok()) *from = *f;
    EXPECT_TRUE(got == b);
  };
  cache::ChunkFrom from;
  fetch(owned[0], &from);  // through the link: a lease, so node 0 has it
  EXPECT_EQ(from, cache::ChunkFrom::kOrigin);
  EXPECT_EQ(nodes_[0]->service.Stats().chunks_received, 1u);
  link.Blackhole(true);
  auto start = std::chrono::steady_clock::now();
  fetch(owned[1], &from);
  EXPECT_EQ(from, cache::ChunkFrom::kOrigin);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_TRUE((*m)->Stats()[0].set_aside);
  start = std::chrono::steady_clock::now();
  uint64_t asked = client.Stats().peers[0].requests;
  fetch(owned[2], &from);  // set aside: not asked
  EXPECT_EQ(client.Stats().peers[0].requests, asked);
  EXPECT_EQ(origin_reads_, 3);
  // Healed, and the backoff over: the peer is asked again.
  link.Blackhole(false);
  clock.Advance(absl::Seconds(2));
  fetch(owned[0], &from);
  EXPECT_EQ(from, cache::ChunkFrom::kPeer);
  EXPECT_EQ(origin_reads_, 3);
}

// A peer that stalls for seconds (a CPU-starved node, a long GC of its
// network) but then answers is waited for: its connection's pings give it
// ten seconds, and dropping it would cost the chunks in flight on it (and
// leases' uploads) a second trip to the origin. The stall here outlasts
// what the pings once allowed (a ping every 2 s, 2 s to answer) and is
// well inside what they allow now (3 s and 10 s).
TEST_F(PeersTest, APeerThatStallsForSecondsIsWaitedForNotDropped) {
  StartNodes(1);
  const std::string key = "http://o/s@\"v\"";
  strata::testing::TcpProxy link("127.0.0.9", "127.0.0.1", Port(0));
  ASSERT_TRUE(link.ok());
  std::string via = absl::StrCat("127.0.0.9:", link.port());
  auto m = Members("127.0.0.2:1", {via});
  PeerClient client(*m, Insecure(), {.timeout = absl::Seconds(60)});
  const uint32_t idx = FirstOwnedBy(*m, via, key);
  auto fetch = [&](cache::ChunkFrom* from) {
    std::string got(kChunk, '\0');
    auto f = client.Fetch({key, idx, kObject, kChunk, {}}, absl::MakeSpan(got),
                          [&](absl::Span<char> o) { return FromOrigin(key, idx, o); });
    ASSERT_TRUE(f.ok()) << f.status();
    *from = *f;
    EXPECT_TRUE(got == Bytes(key, idx));
  };
  cache::ChunkFrom from;
  fetch(&from);  // connected, and node 0 holds the chunk (this node's lease)
  ASSERT_EQ(from, cache::ChunkFrom::kOrigin);
  link.Blackhole(true);
  std::thread resume([&] {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    link.Blackhole(false);
  });
  fetch(&from);
  resume.join();
  EXPECT_EQ(from, cache::ChunkFrom::kPeer);
  EXPECT_EQ(origin_reads_, 1);
  EXPECT_EQ(client.Stats().peers[0].failures, 0u);
  EXPECT_FALSE(m->Stats()[0].set_aside);
}

TEST_F(PeersTest, MalformedOrConflictingWantsAreRefusedWithTheRightCode) {
  StartNodes(1);
  ASSERT_TRUE(nodes_[0]->store->Register({"known", kObject, "test", kChunk}).ok());
  auto stub = v1::Peer::NewStub(
      grpc::CreateChannel(nodes_[0]->address, grpc::InsecureChannelCredentials()));
  auto ask = [&](const std::string& key, uint32_t idx, uint64_t size, uint32_t cs) {
    grpc::ClientContext ctx;
    auto s = stub->Fetch(&ctx);
    v1::FetchRequest w;
    v1::ChunkRef* c = w.mutable_want()->mutable_chunk();
    c->set_key(key);
    c->set_index(idx);
    c->set_object_size(size);
    c->set_chunk_size(cs);
    s->Write(w);
    s->WritesDone();
    v1::FetchResponse r;
    while (s->Read(&r)) {
    }
    return s->Finish().error_code();
  };
  using C = grpc::StatusCode;
  EXPECT_EQ(ask("", 0, kObject, kChunk), C::INVALID_ARGUMENT);
  EXPECT_EQ(ask(std::string("a\0b", 3), 0, kObject, kChunk), C::INVALID_ARGUMENT);
  EXPECT_EQ(ask(std::string(5000, 'k'), 0, kObject, kChunk), C::INVALID_ARGUMENT);
  EXPECT_EQ(ask("k", 0, kObject, 1000), C::INVALID_ARGUMENT);
  EXPECT_EQ(ask("k", 0, 0, kChunk), C::INVALID_ARGUMENT);
  EXPECT_EQ(ask("k", 64, kObject, kChunk), C::OUT_OF_RANGE);
  EXPECT_EQ(ask("k", UINT32_MAX, UINT64_MAX, kChunk), C::INVALID_ARGUMENT);
  EXPECT_EQ(ask("known", 0, kObject + 1, kChunk), C::FAILED_PRECONDITION);
  // Nobody fetches it and the asker cannot: NOT_FOUND, nothing granted.
  EXPECT_EQ(ask("nobody", 0, kObject, kChunk), C::NOT_FOUND);
  EXPECT_EQ(nodes_[0]->service.Stats().refused, 8u);
  EXPECT_EQ(nodes_[0]->service.Stats().leases_granted, 0u);
  auto known = nodes_[0]->store->Lookup("known");
  ASSERT_TRUE(known.has_value());
  EXPECT_EQ(known->size, kObject);  // not replaced on a peer's word
}

// --- mutual TLS -------------------------------------------------------------

// Certificates made with openssl as an operator would (deploy/README.md).
class PeerTlsTest : public PeersTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(MakeCa("ca1"));
    ASSERT_TRUE(MakeCa("ca2"));
    ASSERT_TRUE(MakeCert("ca1", "node1", "strata-peer"));
    ASSERT_TRUE(MakeCert("ca1", "node2", "strata-peer"));
    ASSERT_TRUE(MakeCert("ca2", "rogue", "strata-peer"));
    ASSERT_TRUE(MakeCert("ca1", "wrongname", "someone-else"));
  }
  bool Run(const std::vector<std::string>& argv) {
    std::string out;
    int rc = strata::testing::RunCommand(argv, &out);
    if (rc != 0) ADD_FAILURE() << argv[0] << " " << argv[1] << ": " << out;
    return rc == 0;
  }
  bool MakeCa(const std::string& name) {
    std::string d = dir_.path() + "/" + name;
    std::filesystem::create_directories(d);
    return Run({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", d + "/ca.key", "-out",
                d + "/ca.crt", "-days", "2", "-subj", "/CN=" + name});
  }
  // DIR/NAME holds ca.crt (its CA's), tls.crt and tls.key.
  bool MakeCert(const std::string& ca, const std::string& name, const std::string& san) {
    std::string d = dir_.path() + "/" + name, c = dir_.path() + "/" + ca;
    std::filesystem::create_directories(d);
    std::ofstream(d + "/ext") << "subjectAltName=DNS:" << san
                              << "\nextendedKeyUsage=serverAuth,clientAuth\n";
    return Run({"/usr/bin/openssl", "req", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", d + "/tls.key", "-out",
                d + "/tls.csr", "-subj", "/CN=" + san}) &&
           Run({"/usr/bin/openssl", "x509", "-req", "-in", d + "/tls.csr", "-CA", c + "/ca.crt",
                "-CAkey", c + "/ca.key", "-CAcreateserial", "-out", d + "/tls.crt", "-days", "2",
                "-extfile", d + "/ext"}) &&
           std::filesystem::copy_file(c + "/ca.crt", d + "/ca.crt");
  }
  PeerCredentials Creds(const std::string& name) {
    auto c = LoadPeerCredentials({dir_.path() + "/" + name, "strata-peer", false, 1});
    EXPECT_TRUE(c.ok()) << c.status();
    return *c;
  }
  // Whether a client with `creds` gets a chunk from node 0 (which has it).
  bool Gets(const PeerCredentials& creds) {
    const std::string key = "sha256:tls";
    auto m = Members("127.0.0.5:1", {nodes_[0]->address});
    const uint32_t idx = FirstOwnedBy(*m, nodes_[0]->address, key);
    std::string b = Bytes(key, idx);
    EXPECT_TRUE(nodes_[0]->store->Register({key, kObject, "test", kChunk}).ok());
    EXPECT_TRUE(nodes_[0]->store->WriteChunk(key, idx, absl::MakeSpan(b)).ok());
    PeerClient client(*m, creds, {.timeout = absl::Seconds(5), .max_candidates = 1});
    std::string got(kChunk, '\0');
    auto from =
        client.Fetch({key, idx, kObject, kChunk, {}}, absl::MakeSpan(got), [&](absl::Span<char> o) {
          std::memcpy(o.data(), b.data(), o.size());
          return absl::OkStatus();
        });
    EXPECT_TRUE(from.ok());
    EXPECT_TRUE(got == b);
    return from.ok() && *from == cache::ChunkFrom::kPeer;
  }
  TempDir dir_;
};

TEST_F(PeerTlsTest, OnlyPeersWithACertificateOfTheClustersCaGetAnything) {
  StartNodes(1, {Creds("node1")});
  EXPECT_TRUE(Gets(Creds("node2")));
  EXPECT_FALSE(Gets(Creds("rogue")));  // signed by another CA
  EXPECT_FALSE(Gets(Insecure()));      // no TLS, no certificate
  // TLS but no client certificate: the CA alone.
  grpc::SslCredentialsOptions anon;
  anon.pem_root_certs = strata::testing::ReadPath(dir_.path() + "/ca1/ca.crt");
  EXPECT_FALSE(Gets({nullptr, grpc::SslCredentials(anon), "strata-peer"}));
  EXPECT_EQ(nodes_[0]->service.Stats().wants, 1u);  // only node2's came through
}

TEST_F(PeerTlsTest, APeerWhoseCertificateNamesSomeoneElseIsNotTrustedAsAServer) {
  StartNodes(1, {Creds("wrongname")});
  EXPECT_FALSE(Gets(Creds("node2")));
  EXPECT_EQ(nodes_[0]->service.Stats().wants, 0u);
}

// cert-manager renews by rewriting the Secret, kubelet the mounted files:
// the running node takes the new files without a restart. Here the CA
// bundle grows to trust a second CA, whose peer is then let in.
TEST_F(PeerTlsTest, RenewedFilesAreTakenWithoutARestart) {
  std::string server = dir_.path() + "/server";
  std::filesystem::create_directories(server);
  for (const char* f : {"ca.crt", "tls.crt", "tls.key"}) {
    std::filesystem::copy_file(dir_.path() + "/node1/" + f, server + "/" + f);
  }
  StartNodes(1, {Creds("server")});
  // A peer of the second CA that trusts the first.
  std::string other = dir_.path() + "/other";
  std::filesystem::create_directories(other);
  std::filesystem::copy_file(dir_.path() + "/rogue/tls.crt", other + "/tls.crt");
  std::filesystem::copy_file(dir_.path() + "/rogue/tls.key", other + "/tls.key");
  std::filesystem::copy_file(dir_.path() + "/ca1/ca.crt", other + "/ca.crt");
  EXPECT_FALSE(Gets(Creds("other")));
  std::string bundle = strata::testing::ReadPath(dir_.path() + "/ca1/ca.crt") +
                       strata::testing::ReadPath(dir_.path() + "/ca2/ca.crt");
  strata::testing::WriteFile(server + "/ca.crt.new", bundle);
  std::filesystem::rename(server + "/ca.crt.new", server + "/ca.crt");
  bool in = false;
  for (int i = 0; i < 20 && !in; ++i) {  // the files are read every second
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    in = Gets(Creds("other"));
  }
  EXPECT_TRUE(in);
}

TEST(PeerTlsOptionsTest, ACertificateDirectoryOrAnExplicitInsecureIsRequired) {
  EXPECT_TRUE(absl::IsInvalidArgument(LoadPeerCredentials({"", "strata-peer", false}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(LoadPeerCredentials({"/x", "strata-peer", true}).status()));
  TempDir d;
  auto st = LoadPeerCredentials({d.path(), "strata-peer", false}).status();
  EXPECT_THAT(st.message(), HasSubstr("ca.crt"));
  EXPECT_TRUE(LoadPeerCredentials({"", "strata-peer", true}).ok());
}

}  // namespace
}  // namespace strata::peer
