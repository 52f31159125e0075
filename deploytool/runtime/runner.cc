// deploytool-run: load a package, feed it .npy or seeded random inputs, run it, write .npy outputs.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "deploytool.hpp"
#include "npy.hpp"

namespace {

const char* kUsage =
    "usage: deploytool-run [PACKAGE] [--device cpu] [--input NAME=FILE.npy]... [--seed N]\n"
    "                      [--output-dir DIR] [--repeat N] [--verify] [--self-test]\n"
    "PACKAGE defaults to the package this program belongs to. Inputs not given are seeded random\n"
    "(floats in [-1, 1), integers in [0, 10)).\n"
    "--verify     check model.so and the test vectors against their sha256 in manifest.json\n"
    "--self-test  verify, then run the package's test vectors against its reference outputs\n";

double Millis(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

std::string OwnPackage() {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return ".";
  std::string path(exe, static_cast<size_t>(n));
  path = path.substr(0, path.rfind('/'));  // bin/
  return path.substr(0, path.rfind('/'));
}

std::string FileName(const std::string& tensor_name) {
  std::string name = tensor_name;
  for (char& c : name) {
    if (c == '/' || c == '\\' || c == ':' || c == ' ') c = '_';
  }
  return name + ".npy";
}

// Seeded inputs from mt19937_64, whose sequence the C++ standard fixes, so every platform agrees.
void FillRandom(const deploytool::TensorInfo& info, std::mt19937_64& rng, std::vector<char>& buffer) {
  size_t item = npy::DescrOf(info.dtype).back() - '0';
  size_t count = info.nbytes / item;
  for (size_t i = 0; i < count; ++i) {
    uint64_t bits = rng();
    char* at = buffer.data() + i * item;
    if (info.dtype == "float32") {
      float value = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
      std::memcpy(at, &value, item);
    } else if (info.dtype == "float64") {
      double value = static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
      std::memcpy(at, &value, item);
    } else if (info.dtype == "bool") {
      *at = static_cast<char>(bits & 1);
    } else if (info.dtype.rfind("int", 0) == 0 || info.dtype.rfind("uint", 0) == 0) {
      int64_t value = static_cast<int64_t>(bits % 10);
      std::memcpy(at, &value, item);  // little-endian: the low bytes hold the value
    } else {
      throw std::runtime_error("cannot make random data of dtype " + info.dtype + "; pass --input");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string package, device = "cpu", output_dir;
  std::map<std::string, std::string> input_files;
  uint64_t seed = 0;
  long repeat = 0;
  bool verify = false, self_test = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: %s needs a value\n%s", arg.c_str(), kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::printf("%s", kUsage);
      return 0;
    } else if (arg == "--device") {
      device = value();
    } else if (arg == "--input") {
      std::string spec = value();
      size_t eq = spec.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "error: --input takes NAME=FILE.npy, got '%s'\n", spec.c_str());
        return 2;
      }
      input_files[spec.substr(0, eq)] = spec.substr(eq + 1);
    } else if (arg == "--seed") {
      seed = std::strtoull(value().c_str(), nullptr, 10);
    } else if (arg == "--output-dir") {
      output_dir = value();
    } else if (arg == "--repeat") {
      repeat = std::strtol(value().c_str(), nullptr, 10);
    } else if (arg == "--verify") {
      verify = true;
    } else if (arg == "--self-test") {
      self_test = true;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "error: unknown option %s\n%s", arg.c_str(), kUsage);
      return 2;
    } else if (package.empty()) {
      package = arg;
    } else {
      std::fprintf(stderr, "error: unexpected argument %s\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  if (package.empty()) package = OwnPackage();
  if (verify || self_test) {
    if (dt_verify(package.c_str()) != DT_OK) {
      std::fprintf(stderr, "error: %s\n", dt_last_error());
      return 1;
    }
    std::printf("verify: model.so and test vectors match manifest.json\n");
  }
  if (self_test) {
    try {
      deploytool::Model model(package, device);
      std::vector<char> report(1 << 16);
      int code = dt_self_test(model.handle(), report.data(), report.size());
      std::printf("%s", report.data());
      if (code != DT_OK) {
        std::fprintf(stderr, "error: %s\n", dt_last_error());
        return 1;
      }
      return 0;
    } catch (const std::exception& error) {
      std::fprintf(stderr, "error: %s\n", error.what());
      return 1;
    }
  }
  if (verify) return 0;
  try {
    auto start = std::chrono::steady_clock::now();
    deploytool::Model model(package, device);
    double load_ms = Millis(start);
    std::vector<deploytool::TensorInfo> inputs = model.inputs(), outputs = model.outputs();
    std::vector<std::vector<char>> input_data, output_data;
    std::mt19937_64 rng(seed);
    for (const auto& info : inputs) {
      input_data.emplace_back(info.nbytes);
      auto file = input_files.find(info.name);
      if (file == input_files.end()) {
        FillRandom(info, rng, input_data.back());
        continue;
      }
      npy::Array array = npy::Load(file->second);
      if (array.descr != npy::DescrOf(info.dtype) || array.shape != info.shape) {
        throw std::runtime_error(file->second + " holds " + array.descr + " " + npy::ShapeText(array.shape) +
                                 " but input '" + info.name + "' needs " + info.dtype + " " +
                                 npy::ShapeText(info.shape));
      }
      input_data.back() = std::move(array.data);
      input_files.erase(file);
    }
    if (!input_files.empty()) throw std::runtime_error("the model has no input named '" + input_files.begin()->first + "'");
    for (const auto& info : outputs) output_data.emplace_back(info.nbytes);
    std::vector<const void*> in;
    std::vector<void*> out;
    for (auto& data : input_data) in.push_back(data.data());
    for (auto& data : output_data) out.push_back(data.data());

    start = std::chrono::steady_clock::now();
    model.run(in, out);
    double first_ms = Millis(start);
    std::printf("load: %.3f ms\nfirst run: %.3f ms\n", load_ms, first_ms);
    if (repeat > 0) {
      std::vector<double> times(static_cast<size_t>(repeat));
      for (auto& t : times) {
        auto begin = std::chrono::steady_clock::now();
        model.run(in, out);
        t = Millis(begin) * 1000.0;
      }
      std::sort(times.begin(), times.end());
      double sum = 0;
      for (double t : times) sum += t;
      std::printf("runs: %ld, mean %.2f us, min %.2f us, median %.2f us\n", repeat, sum / repeat, times.front(),
                  times[times.size() / 2]);
    }
    if (!output_dir.empty()) {
      for (size_t i = 0; i < outputs.size(); ++i) {
        npy::Save(output_dir + "/" + FileName(outputs[i].name), npy::DescrOf(outputs[i].dtype), outputs[i].shape,
                  output_data[i].data(), outputs[i].nbytes);
      }
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
