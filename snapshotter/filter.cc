// A recursive-descent parser for containerd's filter syntax (the subset of
// it that snapshots use: fields, quoted strings, ==, != and ~=).
#include "snapshotter/filter.h"

#include <cctype>
#include <optional>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata::snapshotter {

struct SnapshotFilter::Selector {
  enum class Op { kPresent, kEqual, kNotEqual, kMatches };
  std::vector<std::string> path;
  Op op = Op::kPresent;
  std::string value;
  std::optional<std::regex> re;
};

namespace {

using Selector = SnapshotFilter::Selector;

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  absl::StatusOr<std::vector<std::shared_ptr<const Selector>>> Filter() {
    std::vector<std::shared_ptr<const Selector>> out;
    while (true) {
      auto sel = ParseSelector();
      if (!sel.ok()) return sel.status();
      out.push_back(std::move(*sel));
      SkipSpace();
      if (pos_ == s_.size()) return out;
      if (s_[pos_] != ',') return Error("',' or the end");
      ++pos_;
    }
  }

 private:
  absl::StatusOr<std::shared_ptr<const Selector>> ParseSelector() {
    auto sel = std::make_shared<Selector>();
    while (true) {
      SkipSpace();
      auto field = Field();
      if (!field.ok()) return field.status();
      sel->path.push_back(std::move(*field));
      if (pos_ < s_.size() && s_[pos_] == '.') {
        ++pos_;
        continue;
      }
      break;
    }
    SkipSpace();
    if (s_.compare(pos_, 2, "==") == 0) {
      sel->op = Selector::Op::kEqual;
    } else if (s_.compare(pos_, 2, "!=") == 0) {
      sel->op = Selector::Op::kNotEqual;
    } else if (s_.compare(pos_, 2, "~=") == 0) {
      sel->op = Selector::Op::kMatches;
    } else {
      return std::shared_ptr<const Selector>(std::move(sel));  // presence
    }
    pos_ += 2;
    SkipSpace();
    auto value = Value();
    if (!value.ok()) return value.status();
    sel->value = std::move(*value);
    if (sel->op == Selector::Op::kMatches) {
      try {  // std::regex reports a bad pattern only by throwing
        sel->re.emplace(sel->value, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return absl::InvalidArgumentError(
            absl::StrCat("filter \"", s_, "\": bad regular expression \"", sel->value, "\""));
      }
    }
    return std::shared_ptr<const Selector>(std::move(sel));
  }

  absl::StatusOr<std::string> Field() {
    if (pos_ < s_.size() && s_[pos_] == '"') return Quoted();
    size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) ||
                                s_[pos_] == '_' || s_[pos_] == '-')) {
      ++pos_;
    }
    if (pos_ == start) return Error("a field name");
    return s_.substr(start, pos_ - start);
  }

  absl::StatusOr<std::string> Value() {
    if (pos_ < s_.size() && s_[pos_] == '"') return Quoted();
    size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != ',' &&
           !std::isspace(static_cast<unsigned char>(s_[pos_]))) {
      ++pos_;
    }
    if (pos_ == start) return Error("a value");
    return s_.substr(start, pos_ - start);
  }

  // A double-quoted string with backslash escapes (\" \\ \n \t).
  absl::StatusOr<std::string> Quoted() {
    std::string out;
    for (++pos_; pos_ < s_.size(); ++pos_) {
      char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c == '\\') {
        if (++pos_ == s_.size()) break;
        c = s_[pos_];
        out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c);
      } else {
        out.push_back(c);
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("filter \"", s_, "\": unterminated quote"));
  }

  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }

  absl::Status Error(const char* wanted) const {
    return absl::InvalidArgumentError(
        absl::StrCat("filter \"", s_, "\": expected ", wanted, " at offset ", pos_));
  }

  const std::string& s_;
  size_t pos_ = 0;
};

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kView:
      return "view";
    case Kind::kActive:
      return "active";
    case Kind::kCommitted:
      return "committed";
  }
  return "";
}

// The value at `path` and whether it is there, as containerd's snapshot
// adaptor sees it: a label's key may itself hold dots.
std::optional<std::string> FieldOf(const SnapshotInfo& info, const std::vector<std::string>& path) {
  if (path.empty()) return std::nullopt;
  const std::string& f = path[0];
  if (path.size() == 1) {
    if (f == "name") return info.name;
    if (f == "parent") return info.parent;
    if (f == "kind") return std::string(KindName(info.kind));
    return std::nullopt;
  }
  if (f != "labels") return std::nullopt;
  std::string key = absl::StrJoin(path.begin() + 1, path.end(), ".");
  auto it = info.labels.find(key);
  if (it == info.labels.end()) return std::nullopt;
  return it->second;
}

}  // namespace

absl::StatusOr<SnapshotFilter> SnapshotFilter::Parse(const std::string& text) {
  Parser p(text);
  auto sels = p.Filter();
  if (!sels.ok()) return sels.status();
  SnapshotFilter f;
  f.selectors_ = std::move(*sels);
  return f;
}

bool SnapshotFilter::Matches(const SnapshotInfo& info) const {
  for (const auto& sel : selectors_) {
    std::optional<std::string> v = FieldOf(info, sel->path);
    bool ok = false;
    switch (sel->op) {
      case Selector::Op::kPresent:
        ok = v.has_value();
        break;
      case Selector::Op::kEqual:
        ok = v.has_value() && *v == sel->value;
        break;
      case Selector::Op::kNotEqual:
        ok = v.value_or("") != sel->value;
        break;
      case Selector::Op::kMatches:
        ok = sel->re && std::regex_search(v.value_or(""), *sel->re);
        break;
    }
    if (!ok) return false;
  }
  return true;
}

bool MatchesAny(const std::vector<SnapshotFilter>& filters, const SnapshotInfo& info) {
  if (filters.empty()) return true;
  for (const auto& f : filters) {
    if (f.Matches(info)) return true;
  }
  return false;
}

}  // namespace strata::snapshotter
