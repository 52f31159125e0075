// deploytool-run: load a package, feed it .npy or seeded random inputs, run it, write .npy outputs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "deploytool.hpp"
#include "npy.hpp"

namespace {

const char* kUsage =
    "usage: deploytool-run [PACKAGE] [--device cpu|cuda:N] [--input NAME=FILE.npy]... [--seed N]\n"
    "                      [--output-dir DIR] [--repeat N] [--verify] [--self-test] [--threads N]\n"
    "                      [--warmup-ms MS] [--min-iters N] [--min-seconds S] [--json FILE]\n"
    "                      [--shape NAME=4x512]... [--profile FILE]\n"
    "PACKAGE defaults to the package this program belongs to, --device to its own device (cpu,\n"
    "cuda:0). Inputs not given are seeded random (floats in [-1, 1), integers in [0, 10)).\n"
    "A package with a symbolic dimension (a dynamic batch) takes its size from each --input file;\n"
    "random inputs have size 1 there unless --shape gives the input's whole shape.\n"
    "--verify     check model.so and the test vectors against their sha256 in manifest.json\n"
    "--self-test  verify, then run the package's test vectors against its reference outputs\n"
    "Every load checks model.so against its sha256 first; DEPLOYTOOL_SKIP_VERIFY=1 skips that.\n"
    "--threads    CPU threads per run (dt_load_ex; default TVM_NUM_THREADS, else the physical cores).\n"
    "Any of --warmup-ms (default 200), --min-iters (50), --min-seconds (3) or --json runs a\n"
    "benchmark: warm-up, then timed runs until both minimums are met; --json writes every latency,\n"
    "the statistics and the peak RSS.\n"
    "--profile    then times every kernel inside the model (CPU packages; at least 10 runs and 1 s)\n"
    "             and writes FILE: a line per kernel call, '<median us> <runs> <kernel>', in call order.\n";

constexpr long kMaxThreads = 4096;             // --threads
constexpr long kMaxRepeat = 1000000000;        // --repeat
constexpr long kMaxKeptLatencies = 10000000;   // latencies a benchmark keeps (--min-iters), 80 MB

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

// "<path>: <strerror(errno)>" for an error message.
std::string Reason(const std::string& path) { return path + ": " + std::strerror(errno); }

// mkdir -p: creates the folder and its missing parents.
void MakeDirs(const std::string& path) {
  for (size_t at = path.find('/', 1); ; at = path.find('/', at + 1)) {
    std::string prefix = path.substr(0, at);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      throw std::runtime_error("cannot create the folder " + Reason(prefix) + ". Choose a writable --output-dir");
    }
    if (at == std::string::npos) break;
  }
}

std::string FileName(const std::string& tensor_name) {
  std::string name = tensor_name;
  for (char& c : name) {
    if (c == '/' || c == '\\' || c == ':' || c == ' ') c = '_';
  }
  return name + ".npy";
}

// Seeded inputs from mt19937_64, whose sequence the C++ standard fixes, so every platform agrees.
void FillRandom(const deploytool::TensorInfo& info, size_t nbytes, std::mt19937_64& rng, char* buffer) {
  size_t item = npy::DescrOf(info.dtype).back() - '0';
  size_t count = nbytes / item;
  for (size_t i = 0; i < count; ++i) {
    uint64_t bits = rng();
    char* at = buffer + i * item;
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

// 64-byte aligned memory: dt_run then hands it to the model as it is, without a copy.
using Buffer = std::unique_ptr<char, void (*)(void*)>;

Buffer AlignedBuffer(size_t bytes) {
  char* data = static_cast<char*>(std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64)));
  if (data == nullptr) throw std::bad_alloc();
  std::memset(data, 0, bytes);
  return Buffer(data, std::free);
}

// Peak resident memory of this process in KiB. VmHWM belongs to this program's own address space;
// getrusage's ru_maxrss survives exec, so under a large parent (Python) it reports the parent's.
long PeakRssKb() {
  std::FILE* status = std::fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (status != nullptr && std::fgets(line, sizeof(line), status) != nullptr) {
    if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::strtol(line + 6, nullptr, 10);
  }
  if (status != nullptr) std::fclose(status);
  if (kb >= 0) return kb;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;  // kilobytes on Linux
}

size_t BytesOf(const std::string& dtype, const std::vector<int64_t>& shape) {
  size_t count = npy::DescrOf(dtype).back() - '0';
  for (int64_t extent : shape) count *= static_cast<size_t>(extent);
  return count;
}

// "4x512" -> {4, 512}; exits with a usage error on anything else.
std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (!text.empty() && start <= text.size()) {
    size_t end = text.find('x', start);
    std::string part = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    char* stop = nullptr;
    long long value = std::strtoll(part.c_str(), &stop, 10);
    if (part.empty() || *stop != '\0' || value < 1) {
      std::fprintf(stderr, "Error: --shape takes NAME=SIZExSIZE..., e.g. x=4x512, got '%s'\n", text.c_str());
      std::exit(2);
    }
    shape.push_back(value);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return shape;
}

struct BenchOptions {
  bool enabled = false;
  int threads = 0;  // --threads; 0: the default
  double warmup_ms = 200;
  long min_iters = 50;
  double min_seconds = 3;
  std::string json;
};

struct Stats {
  double min, mean, p50, p90, p99, max, throughput;
};

// Percentile with linear interpolation between closest ranks (NumPy's default method).
double Percentile(const std::vector<double>& sorted, double q) {
  double rank = q / 100.0 * static_cast<double>(sorted.size() - 1);
  size_t low = static_cast<size_t>(rank);
  size_t high = std::min(low + 1, sorted.size() - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - static_cast<double>(low));
}

Stats ComputeStats(std::vector<double> times_ms, double wall_s) {
  std::sort(times_ms.begin(), times_ms.end());
  double sum = 0;
  for (double t : times_ms) sum += t;
  double n = static_cast<double>(times_ms.size());
  return {times_ms.front(), sum / n, Percentile(times_ms, 50), Percentile(times_ms, 90),
          Percentile(times_ms, 99), times_ms.back(), wall_s > 0 ? n / wall_s : 0};
}

// A usage error: one line, `Error: <what>. <how to fix>`, exit 2.
[[noreturn]] void UsageError(const std::string& what, const std::string& fix) {
  std::fprintf(stderr, "Error: %s. %s\n", what.c_str(), fix.c_str());
  std::exit(2);
}

double ParseNumber(const std::string& option, const std::string& text, double min_value, double max_value) {
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !(value >= min_value) || !(value <= max_value)) {
    char range[96];
    std::snprintf(range, sizeof(range), "a number from %g to %g", min_value, max_value);
    UsageError(option + " needs " + range + ", got '" + text + "'", "Pass " + option + " " + range);
  }
  return value;
}

// A whole number in [min_value, max_value], digits only (no sign, no exponent, no fraction).
long ParseCount(const std::string& option, const std::string& text, long min_value, long max_value) {
  bool digits = !text.empty() && text.size() <= 19 && text.find_first_not_of("0123456789") == std::string::npos;
  long value = digits ? std::strtol(text.c_str(), nullptr, 10) : -1;
  if (!digits || value < min_value || value > max_value) {
    std::string range = "a whole number from " + std::to_string(min_value) + " to " + std::to_string(max_value);
    UsageError(option + " needs " + range + ", got '" + text + "'", "Pass " + option + " " + range);
  }
  return value;
}

// --seed: a whole number in [0, 2^64 - 1].
uint64_t ParseSeed(const std::string& text) {
  errno = 0;
  bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  uint64_t value = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE) {
    UsageError("--seed needs a whole number from 0 to 18446744073709551615, got '" + text + "'",
               "Pass --seed N, e.g. --seed 0");
  }
  return value;
}

// Calls write(f) on FILE.tmp, then renames it to FILE, so a reader never sees half a file. A FILE that
// exists and is not a regular file (a device, a pipe) is written in place. Every write is checked:
// throws "cannot write PATH: REASON" on any failure (a full disk, a read-only folder).
template <typename Write>
void WriteAtomically(const std::string& path, Write write) {
  struct stat info;
  bool in_place = stat(path.c_str(), &info) == 0 && !S_ISREG(info.st_mode);
  std::string scratch = in_place ? path : path + ".tmp";
  FILE* f = std::fopen(scratch.c_str(), "w");
  if (f == nullptr) throw std::runtime_error("cannot write " + Reason(scratch) + ". Choose a writable path");
  write(f);
  errno = 0;
  bool ok = !std::ferror(f) && std::fflush(f) == 0;
  int saved = errno;
  ok = std::fclose(f) == 0 && ok;
  if (saved != 0) errno = saved;
  if (ok && !in_place && std::rename(scratch.c_str(), path.c_str()) != 0) ok = false;
  if (!ok) {
    saved = errno;
    if (!in_place) std::remove(scratch.c_str());
    errno = saved != 0 ? saved : EIO;
    throw std::runtime_error("cannot write " + Reason(path) + ". Check the disk space and the folder's permissions");
  }
}

void WriteJson(FILE* f, const std::string& package, const char* threads, double load_ms, double first_ms,
               long rss_before_load_kb, const BenchOptions& bench, long warmup_iters,
               const std::vector<double>& times_ms, double wall_s, const Stats& stats) {
  std::string escaped;
  for (char c : package) {
    if (c == '"' || c == '\\') escaped += '\\';
    escaped += c;
  }
  std::fprintf(f, "{\n  \"backend\": \"package\",\n  \"package\": \"%s\",\n", escaped.c_str());
  if (threads != nullptr && std::atoi(threads) > 0) {
    std::fprintf(f, "  \"threads\": %d,\n", std::atoi(threads));
  } else {
    std::fprintf(f, "  \"threads\": null,\n");
  }
  std::fprintf(f, "  \"load_ms\": %.9g,\n  \"first_run_ms\": %.9g,\n", load_ms, first_ms);
  std::fprintf(f, "  \"warmup_ms\": %.3f,\n  \"warmup_iters\": %ld,\n", bench.warmup_ms, warmup_iters);
  std::fprintf(f, "  \"min_iters\": %ld,\n  \"min_seconds\": %.9g,\n", bench.min_iters, bench.min_seconds);
  std::fprintf(f, "  \"iterations\": %zu,\n  \"wall_s\": %.9f,\n", times_ms.size(), wall_s);
  std::fprintf(f, "  \"stats\": {\"min_ms\": %.9g, \"mean_ms\": %.9g, \"p50_ms\": %.9g, \"p90_ms\": %.9g, "
               "\"p99_ms\": %.9g, \"max_ms\": %.9g, \"throughput_per_s\": %.9g},\n",
               stats.min, stats.mean, stats.p50, stats.p90, stats.p99, stats.max, stats.throughput);
  std::fprintf(f, "  \"rss_before_load_kb\": %ld,\n  \"peak_rss_kb\": %ld,\n", rss_before_load_kb, PeakRssKb());
  std::fprintf(f, "  \"latencies_ms\": [");
  for (size_t i = 0; i < times_ms.size(); ++i) std::fprintf(f, "%s%.9g", i ? ", " : "", times_ms[i]);
  std::fprintf(f, "]\n}\n");
}

// --profile: at least 10 runs and 1 s with the per-kernel timing on, the report written to `path`.
template <typename Run>
void Profile(deploytool::Model& model, Run& run, const std::string& path) {
  model.profile(true);
  auto start = std::chrono::steady_clock::now();
  for (int runs = 0; runs < 10 || Millis(start) < 1000; ++runs) run();
  model.profile(false);
  std::string report = model.profile_report();
  WriteAtomically(path, [&](FILE* f) { std::fputs(report.c_str(), f); });
}

// The command line as parsed; see kUsage.
struct Options {
  std::string package, device, output_dir;  // "" device: the package's
  std::map<std::string, std::string> input_files;
  std::map<std::string, std::vector<int64_t>> given_shapes;
  uint64_t seed = 0;
  long repeat = 0;
  bool verify = false, self_test = false;
  BenchOptions bench;
  std::string profile;
};

// Reads the command line one argument at a time; a usage error exits with 2.
struct Args {
  int argc;
  char** argv;
  int i = 0;
  std::string arg;  // the current argument

  bool Next() {
    if (++i >= argc) return false;
    arg = argv[i];
    return true;
  }

  // The current option's value, the next argument.
  std::string Value() {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "Error: %s needs a value\n%s", arg.c_str(), kUsage);
      std::exit(2);
    }
    return argv[++i];
  }

  // NAME=VALUE options (--input, --shape): exit 2 on a value without '='.
  std::pair<std::string, std::string> NameValue(const char* form) {
    std::string spec = Value();
    size_t eq = spec.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "Error: %s takes %s, got '%s'\n", arg.c_str(), form, spec.c_str());
      std::exit(2);
    }
    return {spec.substr(0, eq), spec.substr(eq + 1)};
  }
};

// --threads and the benchmark options; false if args.arg is none of them.
bool ParseBenchOption(Args& args, BenchOptions* bench) {
  const std::string& arg = args.arg;
  if (arg == "--threads") {
    bench->threads = static_cast<int>(ParseCount(arg, args.Value(), 1, kMaxThreads));
    // TVM sizes its pool from TVM_NUM_THREADS, which may be below --threads
    setenv("TVM_NUM_THREADS", std::to_string(bench->threads).c_str(), 1);
    return true;
  }
  if (arg == "--warmup-ms") {
    bench->warmup_ms = ParseNumber(arg, args.Value(), 0, 3.6e6);
  } else if (arg == "--min-iters") {
    bench->min_iters = ParseCount(arg, args.Value(), 1, kMaxKeptLatencies);
  } else if (arg == "--min-seconds") {
    bench->min_seconds = ParseNumber(arg, args.Value(), 0, 86400);
  } else if (arg == "--json") {
    bench->json = args.Value();
  } else {
    return false;
  }
  bench->enabled = true;
  return true;
}

// The other options; false if args.arg is none of them.
bool ParseRunOption(Args& args, Options* options) {
  const std::string& arg = args.arg;
  if (arg == "--device") {
    options->device = args.Value();
  } else if (arg == "--input") {
    auto [name, file] = args.NameValue("NAME=FILE.npy");
    options->input_files[name] = file;
  } else if (arg == "--shape") {
    auto [name, shape] = args.NameValue("NAME=SIZExSIZE..., e.g. x=4x512");
    options->given_shapes[name] = ParseShape(shape);
  } else if (arg == "--seed") {
    options->seed = ParseSeed(args.Value());
  } else if (arg == "--output-dir") {
    options->output_dir = args.Value();
  } else if (arg == "--repeat") {
    options->repeat = ParseCount(arg, args.Value(), 1, kMaxRepeat);
  } else if (arg == "--verify") {
    options->verify = true;
  } else if (arg == "--self-test") {
    options->self_test = true;
  } else if (arg == "--profile") {
    options->profile = args.Value();
  } else {
    return false;
  }
  return true;
}

// Returns -1 when the program goes on, else its exit code: 0 after --help, 2 on a usage error.
int ParseArgs(int argc, char** argv, Options* options) {
  Args args{argc, argv, 0, ""};
  while (args.Next()) {
    const std::string& arg = args.arg;
    if (arg == "-h" || arg == "--help") {
      std::printf("%s", kUsage);
      return 0;
    }
    if (ParseBenchOption(args, &options->bench) || ParseRunOption(args, options)) continue;
    if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "Error: unknown option %s\n%s", arg.c_str(), kUsage);
      return 2;
    }
    if (!options->package.empty()) {
      std::fprintf(stderr, "Error: unexpected argument %s\n%s", arg.c_str(), kUsage);
      return 2;
    }
    options->package = arg;
  }
  if (options->package.empty()) options->package = OwnPackage();
  return -1;
}

// --verify: false (after the error) if the package does not match its manifest.
bool Verify(const std::string& package) {
  if (dt_verify(package.c_str()) != DT_OK) {
    std::fprintf(stderr, "Error: %s\n", dt_last_error());
    return false;
  }
  std::printf("verify: model.so and test vectors match manifest.json\n");
  return true;
}

// --self-test: runs the package's test vectors and prints the report. Returns the exit code.
int SelfTest(const std::string& package, const std::string& device) {
  try {
    deploytool::Model model(package, device);
    std::vector<char> report(1 << 16);
    int code = dt_self_test(model.handle(), report.data(), report.size());
    std::printf("%s", report.data());
    if (code != DT_OK) {
      std::fprintf(stderr, "Error: %s\n", dt_last_error());
      return 1;
    }
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "Error: %s\n", error.what());
    return 1;
  }
}

// The model's input and output buffers and shapes, and the run that uses them.
struct Tensors {
  std::vector<Buffer> input_data, output_data;
  std::vector<deploytool::Shape> input_shapes, output_shapes;
  std::vector<const void*> in;
  std::vector<void*> out;
  bool dynamic = false;  // some input has a symbolic dimension

  // dt_run for a static package, dt_run_shaped for a dynamic one
  void Run(deploytool::Model& model) {
    if (dynamic) {
      model.run(input_shapes, in, out);
    } else {
      model.run(in, out);
    }
  }
};

// A seeded random input, at the package's shape with symbols 1 or at the shape --shape gives.
void AddRandomInput(const deploytool::TensorInfo& info, const deploytool::Shape* given, std::mt19937_64& rng,
                    Tensors* tensors) {
  deploytool::Shape shape = info.shape;
  for (int64_t& extent : shape) extent = extent < 0 ? 1 : extent;  // a symbol's size: 1 by default
  if (given != nullptr) shape = *given;
  tensors->input_shapes.push_back(shape);
  tensors->input_data.push_back(AlignedBuffer(BytesOf(info.dtype, shape)));
  FillRandom(info, BytesOf(info.dtype, shape), rng, tensors->input_data.back().get());
}

// An input from the .npy file `path`, which must hold the input's dtype (and shape, for a static input).
void AddFileInput(const deploytool::TensorInfo& info, const std::string& path, Tensors* tensors) {
  npy::Array array = npy::Load(path);
  if (array.descr != npy::DescrOf(info.dtype) || (!info.dynamic() && array.shape != info.shape)) {
    throw std::runtime_error(path + " holds " + array.descr + " " + npy::ShapeText(array.shape) + " but input '" +
                             info.name + "' needs " + info.dtype + " " + npy::ShapeText(info.shape));
  }
  tensors->input_shapes.push_back(array.shape);  // a dynamic package checks it in output_shapes below
  tensors->input_data.push_back(AlignedBuffer(array.data.size()));
  std::memcpy(tensors->input_data.back().get(), array.data.data(), array.data.size());
}

// Every input, from its --input file or seeded random; throws on a name the model has no input of.
void LoadInputs(const std::vector<deploytool::TensorInfo>& inputs, const Options& options, Tensors* tensors) {
  std::map<std::string, std::string> input_files = options.input_files;
  std::map<std::string, std::vector<int64_t>> given_shapes = options.given_shapes;
  std::mt19937_64 rng(options.seed);
  for (const auto& info : inputs) {
    tensors->dynamic = tensors->dynamic || info.dynamic();
    auto file = input_files.find(info.name);
    auto given = given_shapes.find(info.name);
    if (file != input_files.end() && given != given_shapes.end()) {
      throw std::runtime_error("input '" + info.name + "' has both --input and --shape; its file gives the shape");
    }
    if (file != input_files.end()) {
      AddFileInput(info, file->second, tensors);
      input_files.erase(file);
    } else {
      AddRandomInput(info, given != given_shapes.end() ? &given->second : nullptr, rng, tensors);
      if (given != given_shapes.end()) given_shapes.erase(given);
    }
  }
  if (!input_files.empty()) throw std::runtime_error("the model has no input named '" + input_files.begin()->first + "'");
  if (!given_shapes.empty()) throw std::runtime_error("the model has no input named '" + given_shapes.begin()->first + "'");
}

// The output buffers, at the output shapes for the input shapes; then the pointers a run takes.
void AllocateOutputs(const deploytool::Model& model, const std::vector<deploytool::TensorInfo>& outputs,
                     Tensors* tensors) {
  tensors->output_shapes = model.output_shapes(tensors->input_shapes);
  for (size_t i = 0; i < outputs.size(); ++i) {
    tensors->output_data.push_back(AlignedBuffer(BytesOf(outputs[i].dtype, tensors->output_shapes[i])));
  }
  for (auto& data : tensors->input_data) tensors->in.push_back(data.get());
  for (auto& data : tensors->output_data) tensors->out.push_back(data.get());
}

// --repeat N: N timed runs, their mean, min and median in microseconds. Memory does not grow with N:
// the median is that of a uniform sample (reservoir) of at most kRepeatSample runs, exact below it.
constexpr size_t kRepeatSample = 100000;

template <typename Run>
void RepeatRuns(long repeat, Run& run) {
  std::vector<double> sample;
  sample.reserve(static_cast<size_t>(std::min<long>(repeat, kRepeatSample)));
  std::mt19937_64 rng(0);
  double sum = 0, min = INFINITY;
  for (long i = 0; i < repeat; ++i) {
    auto begin = std::chrono::steady_clock::now();
    run();
    double t = Millis(begin) * 1000.0;
    sum += t;
    min = std::min(min, t);
    if (sample.size() < kRepeatSample) {
      sample.push_back(t);
    } else {
      uint64_t slot = rng() % static_cast<uint64_t>(i + 1);
      if (slot < kRepeatSample) sample[slot] = t;
    }
  }
  std::sort(sample.begin(), sample.end());
  std::printf("runs: %ld, mean %.2f us, min %.2f us, median %.2f us\n", repeat, sum / repeat, min,
              sample[sample.size() / 2]);
}

// The latencies of a benchmark's timed loop.
struct Timings {
  long warmup_iters = 0;
  std::vector<double> times_ms;
  double wall_s = 0;
};

// Warm-up: run until warmup_ms have passed. Then the timed loop: every buffer is allocated
// before, so an iteration is dt_run and two clock reads; the latency vector is reserved.
template <typename Run>
Timings TimeRuns(const BenchOptions& bench, double first_ms, Run& run) {
  Timings timings;
  auto warm = std::chrono::steady_clock::now();
  while (Millis(warm) < bench.warmup_ms) {
    run();
    ++timings.warmup_iters;
  }
  double per_run_ms = timings.warmup_iters > 0 ? Millis(warm) / static_cast<double>(timings.warmup_iters) : first_ms;
  double expected = std::max(static_cast<double>(bench.min_iters),
                             bench.min_seconds * 1000.0 / std::max(per_run_ms, 1e-6));
  std::vector<double>& times = timings.times_ms;
  times.reserve(static_cast<size_t>(std::min(expected * 1.5 + 64.0, static_cast<double>(kMaxKeptLatencies))));
  auto loop = std::chrono::steady_clock::now();
  while (true) {
    auto begin = std::chrono::steady_clock::now();
    run();
    auto end = std::chrono::steady_clock::now();
    times.push_back(std::chrono::duration<double, std::milli>(end - begin).count());
    timings.wall_s = std::chrono::duration<double>(end - loop).count();
    if (static_cast<long>(times.size()) >= bench.min_iters && timings.wall_s >= bench.min_seconds) break;
    if (static_cast<long>(times.size()) >= kMaxKeptLatencies) break;  // bounded memory: 10 million runs
  }
  return timings;
}

void PrintBench(const Timings& timings, const Stats& stats, const char* threads) {
  std::printf("bench: %zu runs in %.3f s after %ld warm-up runs, threads %s\n", timings.times_ms.size(),
              timings.wall_s, timings.warmup_iters, threads ? threads : "(TVM default)");
  std::printf("latency ms: min %.4f mean %.4f p50 %.4f p90 %.4f p99 %.4f max %.4f\n", stats.min, stats.mean,
              stats.p50, stats.p90, stats.p99, stats.max);
  std::printf("throughput: %.2f runs/s\npeak RSS: %.1f MiB\n", stats.throughput, PeakRssKb() / 1024.0);
}

// The load and first-run times, which --json records beside the benchmark.
struct Startup {
  double load_ms;
  double first_ms;
  long rss_before_load_kb;
};

// The benchmark (--warmup-ms, --min-iters, --min-seconds, --json): times, prints, writes --json.
template <typename Run>
void Bench(const Options& options, const Startup& startup, Run& run) {
  const BenchOptions& bench = options.bench;
  Timings timings = TimeRuns(bench, startup.first_ms, run);
  Stats stats = ComputeStats(timings.times_ms, timings.wall_s);
  const char* threads = std::getenv("TVM_NUM_THREADS");
  PrintBench(timings, stats, threads);
  if (!bench.json.empty()) {
    WriteAtomically(bench.json, [&](FILE* f) {
      WriteJson(f, options.package, threads, startup.load_ms, startup.first_ms, startup.rss_before_load_kb, bench,
                timings.warmup_iters, timings.times_ms, timings.wall_s, stats);
    });
  }
}

// --output-dir: an .npy file per output, named after it.
void WriteOutputs(const std::string& output_dir, const std::vector<deploytool::TensorInfo>& outputs,
                  const Tensors& tensors) {
  MakeDirs(output_dir);
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::string path = output_dir + "/" + FileName(outputs[i].name);
    WriteAtomically(path, [&](FILE* f) {
      npy::Write(f, npy::DescrOf(outputs[i].dtype), tensors.output_shapes[i], tensors.output_data[i].get(),
                 BytesOf(outputs[i].dtype, tensors.output_shapes[i]));
    });
  }
}

// Loads the package, runs it once, then whatever the options ask for. Throws on any error.
void LoadAndRun(const Options& options, long rss_before_load_kb) {
  auto start = std::chrono::steady_clock::now();
  deploytool::Model model(options.package, options.device, {options.bench.threads, DT_SHARE_FAIR});
  Startup startup{Millis(start), 0, rss_before_load_kb};
  std::vector<deploytool::TensorInfo> inputs = model.inputs(), outputs = model.outputs();
  Tensors tensors;
  LoadInputs(inputs, options, &tensors);
  AllocateOutputs(model, outputs, &tensors);
  auto run = [&]() { tensors.Run(model); };

  start = std::chrono::steady_clock::now();
  run();
  startup.first_ms = Millis(start);
  std::printf("load: %.3f ms\nfirst run: %.3f ms\n", startup.load_ms, startup.first_ms);
  if (options.repeat > 0) RepeatRuns(options.repeat, run);
  if (options.bench.enabled) Bench(options, startup, run);
  if (!options.profile.empty()) Profile(model, run, options.profile);
  if (!options.output_dir.empty()) WriteOutputs(options.output_dir, outputs, tensors);
}

}  // namespace

int main(int argc, char** argv) {
  long rss_before_load_kb = PeakRssKb();
  Options options;
  int exit_code = ParseArgs(argc, argv, &options);
  if (exit_code >= 0) return exit_code;
  if ((options.verify || options.self_test) && !Verify(options.package)) return 1;
  if (options.self_test) return SelfTest(options.package, options.device);
  if (options.verify) return 0;
  try {
    LoadAndRun(options, rss_before_load_kb);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "Error: out of memory. Use smaller inputs or free memory on this machine\n");
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "Error: %s\n", error.what());
    return 1;
  }
  return 0;
}
