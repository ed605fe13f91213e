// A volume tree served by a FUSE server on a thread of its own.
#include "csi/fuse_launcher.h"

#include <thread>

#include "base/logging.h"
#include "fuse/image_tree.h"

namespace strata::csi {
namespace {

class TreeSession final : public FuseSession {
 public:
  // `volume` is `tree` when it is a volume tree (its counters), else null.
  TreeSession(std::string id, std::unique_ptr<fuse::Tree> tree, fuse::VolumeTree* volume,
              std::unique_ptr<fuse::FuseServer> server)
      : id_(std::move(id)), tree_(std::move(tree)), volume_(volume), server_(std::move(server)) {}
  ~TreeSession() override { Stop(); }

  fuse::Handoff handoff() const override { return server_ ? server_->handoff() : fuse::Handoff{}; }
  void Serve() override {
    running_ = true;
    serving_ = std::thread([this] {
      if (absl::Status st = server_->Run(); !st.ok())
        spdlog::error("volume {}: {}", id_, st.message());
      running_ = false;
    });
  }
  bool running() const override { return running_; }
  void Stop() override {
    if (server_) server_->Stop();
    if (serving_.joinable()) serving_.join();
    server_.reset();
  }
  absl::StatusOr<struct statvfs> StatFs() override { return tree_->StatFs(); }
  fuse::VolumeStats Stats() const override {
    if (volume_) return volume_->Stats();
    fuse::VolumeStats s;  // an image: only what was read
    if (auto* layers = dynamic_cast<fuse::LayerTree*>(tree_.get()))
      s.bytes_read = layers->bytes_read();
    return s;
  }

 private:
  std::string id_;  // for the log
  std::unique_ptr<fuse::Tree> tree_;
  fuse::VolumeTree* volume_;
  std::unique_ptr<fuse::FuseServer> server_;
  std::thread serving_;
  std::atomic<bool> running_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<FuseSession>> CacheFuseLauncher::Launch(
    const std::string& id, std::shared_ptr<origin::Origin> origin,
    const fuse::VolumeOptions& volume, const fuse::MountOptions& mount,
    const fuse::Handoff* adopt) {
  std::unique_ptr<fuse::Tree> tree;
  fuse::VolumeTree* as_volume = nullptr;
  if (volume.image_files) {
    // The same index every time: a successor's inodes are the kernel's.
    auto image = fuse::OpenImageTree(std::move(origin), store_, fetcher_);
    if (!image.ok()) return image.status();
    // Whole files (raw model layers) are passed through where a successor
    // can learn which the kernel holds.
    if (!mount.open_log.empty()) (*image)->EnableBackingFiles();
    tree = std::move(*image);
  } else {
    auto v = std::make_unique<fuse::VolumeTree>(std::move(origin), store_, fetcher_, volume);
    as_volume = v.get();
    tree = std::move(v);
  }
  auto server =
      adopt ? fuse::FuseServer::Adopt(*tree, mount, *adopt) : fuse::FuseServer::Mount(*tree, mount);
  if (!server.ok()) return server.status();
  return std::make_unique<TreeSession>(id, std::move(tree), as_volume, std::move(*server));
}

}  // namespace strata::csi
