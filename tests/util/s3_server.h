// An S3-speaking server (s3rver, checking SigV4) on 127.0.0.1 for a test,
// with one bucket made, through tests/util/s3_server.sh.
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

#include "tests/util/subprocess.h"

namespace strata::testing {

class S3Server {
 public:
  static constexpr char kKey[] = "AKIASTRATATEST";
  static constexpr char kSecret[] = "strata/test/secret+key";

  // Starts the server with its data in `dir` and makes `bucket`; also sets
  // the AWS_* environment for clients in this process and its children.
  S3Server(const std::string& dir, const std::string& bucket) : dir_(dir) {
    std::string out;
    if (RunCommand({"/bin/bash", kScript, "start", dir, "0", kKey, kSecret}, &out) != 0) {
      error_ = "s3_server.sh start failed: " + out;
      return;
    }
    std::ifstream(dir + "/s3rver.port") >> port_;
    endpoint_ = "http://127.0.0.1:" + std::to_string(port_);
    if (RunCommand({"/usr/bin/curl", "-sf", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3",
                    "--user", std::string(kKey) + ":" + kSecret, "-H",
                    "x-amz-content-sha256: UNSIGNED-PAYLOAD", endpoint_ + "/" + bucket},
                   &out) != 0) {
      error_ = "cannot create bucket " + bucket + ": " + out;
    }
    ::setenv("AWS_ACCESS_KEY_ID", kKey, 1);
    ::setenv("AWS_SECRET_ACCESS_KEY", kSecret, 1);
  }
  ~S3Server() {
    RunCommand({"/bin/bash", kScript, "stop", dir_});
    ::unsetenv("AWS_ACCESS_KEY_ID");
    ::unsetenv("AWS_SECRET_ACCESS_KEY");
  }

  bool ok() const { return error_.empty() && port_ > 0; }
  const std::string& error() const { return error_; }
  int port() const { return port_; }
  const std::string& endpoint() const { return endpoint_; }

 private:
  static constexpr const char* kScript = STRATA_SOURCE_DIR "/tests/util/s3_server.sh";
  std::string dir_, endpoint_, error_;
  int port_ = 0;
};

}  // namespace strata::testing
