// containerd's filter expressions over snapshots, as its List (Walk) sends
// them: `labels."containerd.io/snapshot.ref"==sha256:...,parent=="a/b"`.
// A filter is selectors joined by ',' (all must match); a selector is a
// field path (name, parent, kind, labels.KEY; parts may be quoted) with
// an operator (==, !=, ~= a regular expression) and a value, or alone
// (the field is present).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "snapshotter/snapshot_db.h"

namespace strata::snapshotter {

class SnapshotFilter {
 public:
  // InvalidArgument naming the position of what does not parse.
  static absl::StatusOr<SnapshotFilter> Parse(const std::string& text);
  bool Matches(const SnapshotInfo& info) const;

  struct Selector;

 private:
  std::vector<std::shared_ptr<const Selector>> selectors_;
};

// True when `filters` is empty or any of them matches.
bool MatchesAny(const std::vector<SnapshotFilter>& filters, const SnapshotInfo& info);

}  // namespace strata::snapshotter
