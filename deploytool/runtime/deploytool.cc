// deploytool C API over the TVM runtime: reads manifest.json, checks the machine, runs the Relax VM.
#include "deploytool.h"
#include "deploytool_dlpack.h"
#include "npy.hpp"
#include "sha256.hpp"

#include <dlfcn.h>
#include <sched.h>
#include <sys/stat.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif
#if defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#endif

namespace ffi = tvm::ffi;

namespace {

thread_local std::string g_last_error;

int Fail(int code, const std::string& message) {
  g_last_error = message;
  return code;
}

struct TensorSpec {
  std::string name;
  std::string dtype;
  DLDataType dl_dtype;
  std::vector<int64_t> shape;        // -1 for a symbolic dimension
  std::vector<std::string> symbols;  // the symbol of each dimension, "" for a static one
  std::vector<int64_t> max_shape;    // the symbol's upper bound, -1 when unbounded
  size_t item;                       // bytes per element
  size_t nbytes;                     // at max_shape; 0 if a dimension is unbounded
  bool dynamic = false;
};

size_t BytesOf(const TensorSpec& spec, const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t extent : shape) count *= static_cast<size_t>(extent);
  return count * spec.item;
}

// Wraps caller memory as a tensor without copying; the caller keeps ownership.
struct BorrowedAlloc {
  void* data;
  void AllocData(DLTensor* tensor) { tensor->data = data; }
  void FreeData(DLTensor*) {}
};

// Owns 64-byte aligned memory, which TVM kernels may assume for their arguments.
struct AlignedAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = ffi::GetDataSize(*tensor);
    tensor->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::string();
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// CPU feature flags of this machine as /proc/cpuinfo names them ("avx2", "asimd", ...).
std::set<std::string> MachineCpuFlags() {
#if defined(__aarch64__)
  // On aarch64, /proc/cpuinfo's Features are the kernel's hwcaps, named in this bit order
  // (<bits/hwcap.h>). Reading them directly is also right under qemu-user, which shows the
  // host's /proc/cpuinfo but gives the program the emulated CPU's hwcaps.
  static const char* const kHwcap[] = {
      "fp",    "asimd", "evtstrm", "aes",      "pmull",  "sha1",   "sha2",  "crc32", "atomics",
      "fphp",  "asimdhp", "cpuid", "asimdrdm", "jscvt",  "fcma",   "lrcpc", "dcpop", "sha3",
      "sm3",   "sm4",   "asimddp", "sha512",   "sve",    "asimdfhm", "dit", "uscat", "ilrcpc",
      "flagm", "ssbs",  "sb",      "paca",     "pacg"};
  static const char* const kHwcap2[] = {
      "dcpodp", "sve2",    "sveaes",   "svepmull", "svebitperm", "svesha3", "svesm4",
      "flagm2", "frint",   "svei8mm",  "svef32mm", "svef64mm",   "svebf16", "i8mm",
      "bf16",   "dgh",     "rng",      "bti",      "mte"};
  std::set<std::string> hwcaps;
  unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  for (size_t bit = 0; bit < sizeof(kHwcap) / sizeof(kHwcap[0]); ++bit) {
    if (hwcap & (1UL << bit)) hwcaps.insert(kHwcap[bit]);
  }
  for (size_t bit = 0; bit < sizeof(kHwcap2) / sizeof(kHwcap2[0]); ++bit) {
    if (hwcap2 & (1UL << bit)) hwcaps.insert(kHwcap2[bit]);
  }
  if (!hwcaps.empty()) return hwcaps;
#endif
  std::ifstream in("/proc/cpuinfo");
  std::set<std::string> flags;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0 && line.rfind("Features", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::string word;
    while (words >> word) flags.insert(word);
    break;
  }
  return flags;
}

const char* MachineArch() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

ffi::json::Object AsObject(const ffi::Any& value, const char* what) {
  auto object = value.try_cast<ffi::json::Object>();
  if (!object.has_value()) throw std::runtime_error(std::string(what) + " is not a JSON object");
  return *object;
}

ffi::Any Field(const ffi::json::Object& object, const char* key) {
  auto value = object.Get(ffi::String(key));
  if (!value.has_value()) throw std::runtime_error(std::string("missing field '") + key + "'");
  return *value;
}

ffi::json::Object ReadManifest(const std::string& dir) {
  std::string text = ReadFile(dir + "/manifest.json");
  if (text.empty()) throw std::runtime_error("not a deploytool package: " + dir + "/manifest.json is missing or empty");
  ffi::String parse_error;
  return AsObject(ffi::json::Parse(text, &parse_error), "manifest.json");
}

double ValueAt(const char* data, const std::string& dtype, size_t i) {
  if (dtype == "float32") return reinterpret_cast<const float*>(data)[i];
  if (dtype == "float64") return reinterpret_cast<const double*>(data)[i];
  if (dtype == "int64") return static_cast<double>(reinterpret_cast<const int64_t*>(data)[i]);
  if (dtype == "int32") return reinterpret_cast<const int32_t*>(data)[i];
  if (dtype == "int8") return reinterpret_cast<const int8_t*>(data)[i];
  if (dtype == "uint8" || dtype == "bool") return reinterpret_cast<const uint8_t*>(data)[i];
  throw std::runtime_error("the self-test cannot compare dtype " + dtype);
}

std::vector<TensorSpec> ParseTensorSpecs(const ffi::Any& value) {
  std::vector<TensorSpec> specs;
  for (const ffi::Any& item : value.cast<ffi::json::Array>()) {
    ffi::json::Object object = AsObject(item, "a tensor entry");
    TensorSpec spec;
    spec.name = Field(object, "name").cast<ffi::String>();
    spec.dtype = Field(object, "dtype").cast<ffi::String>();
    spec.dl_dtype = ffi::StringToDLDataType(spec.dtype);
    std::optional<ffi::json::Object> bounds;
    if (auto value = object.Get(ffi::String("bounds"))) bounds = AsObject(*value, "bounds");
    bool unbounded = false;
    for (const ffi::Any& dim : Field(object, "shape").cast<ffi::json::Array>()) {
      if (auto extent = dim.try_cast<int64_t>()) {
        spec.shape.push_back(*extent);
        spec.symbols.push_back("");
        spec.max_shape.push_back(*extent);
        continue;
      }
      std::string symbol = dim.cast<ffi::String>();  // a symbolic dimension such as "N"
      auto bound = bounds ? bounds->Get(ffi::String(symbol)) : std::nullopt;
      spec.shape.push_back(-1);
      spec.symbols.push_back(symbol);
      spec.max_shape.push_back(bound ? bound->cast<int64_t>() : -1);
      unbounded = unbounded || !bound;
      spec.dynamic = true;
    }
    if (spec.shape.size() > DT_MAX_NDIM) throw std::runtime_error("tensor '" + spec.name + "' has too many dimensions");
    spec.item = (spec.dl_dtype.bits * spec.dl_dtype.lanes + 7) / 8;
    spec.nbytes = unbounded ? 0 : BytesOf(spec, spec.max_shape);
    specs.push_back(spec);
  }
  return specs;
}

bool ParseDevice(const char* text, DLDevice* device) {
  std::string spec = text ? text : "cpu";
  std::string kind = spec.substr(0, spec.find(':'));
  int index = 0;
  if (spec.find(':') != std::string::npos) {
    char* end = nullptr;
    std::string number = spec.substr(spec.find(':') + 1);
    long parsed = std::strtol(number.c_str(), &end, 10);
    if (number.empty() || *end != '\0' || parsed < 0 || parsed > INT_MAX) return false;
    index = static_cast<int>(parsed);
  }
  if (kind == "cpu") {
    *device = DLDevice{kDLCPU, index};
    return true;
  }
  if (kind == "cuda") {
    *device = DLDevice{kDLCUDA, index};
    return true;
  }
  return false;
}

std::string DeviceText(DLDevice device) {
  return std::string(device.device_type == kDLCUDA ? "cuda:" : "cpu:") + std::to_string(device.device_id);
}

ffi::Function Global(const char* name) {
  auto function = ffi::Function::GetGlobal(name);
  if (!function.has_value()) throw std::runtime_error(std::string("the TVM runtime lacks ") + name);
  return *function;
}

// Makes `device` the calling thread's current GPU, on which TVM launches the kernels.
void SelectDevice(DLDevice device) {
  Global("__tvm_set_device")(static_cast<int>(device.device_type), device.device_id);
}

// Loads the package's lib/libtvm_runtime_cuda.so (which registers TVM's CUDA device and kernel
// loader) and checks that the GPU exists and can run the package's kernels.
int PrepareCuda(const std::string& dir, DLDevice device, const std::string& package_arch) {
  std::string library = dir + "/lib/libtvm_runtime_cuda.so";
  if (dlopen(library.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::string error = dlerror();
    if (error.find("libcuda.so") != std::string::npos) {
      return Fail(DT_ERR_DEVICE, "cannot use CUDA on this machine: the NVIDIA driver (libcuda.so.1) is not "
                                 "installed (" + error + "). Run the package on a machine with an NVIDIA GPU "
                                 "and driver, or compile it for a CPU target");
    }
    return Fail(DT_ERR_PACKAGE, "cannot load " + library + ": " + error);
  }
  try {
    ffi::Function attr = Global("runtime.GetDeviceAttr");
    const int kExist = 0, kComputeVersion = 4;
    ffi::Any exist = attr(static_cast<int>(kDLCUDA), device.device_id, kExist);
    if (!exist.try_cast<int64_t>().value_or(0)) {
      return Fail(DT_ERR_DEVICE, "no CUDA GPU " + DeviceText(device) + " on this machine (the NVIDIA driver "
                                 "found none). Run the package on a machine with an NVIDIA GPU, or pick "
                                 "another device index");
    }
    std::string version = attr(static_cast<int>(kDLCUDA), device.device_id, kComputeVersion).cast<ffi::String>();
    int major = 0, minor = 0;
    int package_sm = package_arch.rfind("sm_", 0) == 0 ? std::atoi(package_arch.c_str() + 3) : 0;
    if (std::sscanf(version.c_str(), "%d.%d", &major, &minor) == 2 && major * 10 + minor < package_sm) {
      return Fail(DT_ERR_DEVICE, "the package was compiled for " + package_arch + " but GPU " + DeviceText(device) +
                                     " has compute capability " + version +
                                     ". Compile it for this GPU (--target cuda)");
    }
  } catch (const std::exception& error) {
    return Fail(DT_ERR_DEVICE, "cannot use GPU " + DeviceText(device) + ": " + error.what());
  }
  return DT_OK;
}

void FillInfo(const TensorSpec& spec, dt_tensor_info* out) {
  out->name = spec.name.c_str();
  out->dtype = spec.dtype.c_str();
  out->ndim = static_cast<int>(spec.shape.size());
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    out->shape[i] = spec.shape[i];
    out->max_shape[i] = spec.max_shape[i];
  }
  out->nbytes = spec.nbytes;
}

std::string SpecText(const TensorSpec& spec) {
  std::string text = "(";
  for (size_t d = 0; d < spec.shape.size(); ++d) {
    text += d ? ", " : "";
    if (spec.symbols[d].empty()) {
      text += std::to_string(spec.shape[d]);
    } else {
      text += spec.symbols[d] + (spec.max_shape[d] > 0 ? "<=" + std::to_string(spec.max_shape[d]) : "");
    }
  }
  return text + (spec.shape.size() == 1 ? ",)" : ")");
}

}  // namespace

// When a CPU model last ran, for sharing the cores (CpuShare).
struct CpuActivity {
  bool running = false;
  std::chrono::steady_clock::time_point last_end;
};

struct dt_model {
  std::string dir;
  std::optional<ffi::json::Object> manifest;
  DLDevice device;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::optional<ffi::Module> library;  // keeps model.so loaded while the VM runs
  std::optional<ffi::Module> vm;
  std::optional<ffi::Function> main;
  // aligned copies for static inputs whose memory is not 64-byte aligned (none for dynamic inputs)
  std::vector<std::optional<ffi::Tensor>> staging;
  bool dynamic = false;  // some input has a symbolic dimension
  int pool = 1;                   // the process's CPU thread count (TVM_NUM_THREADS)
  int threads = 1;                // the most threads a run uses (dt_options.threads, at most pool)
  int share = DT_SHARE_FAIR;      // dt_options.share
  CpuActivity activity;           // guarded by g_cpu_models_mutex
  std::mutex lock;
  // dt_profile: per call of a run (in call order), the kernel's name and its times in us
  std::vector<std::pair<std::string, std::vector<double>>> profile;
  size_t profile_call = 0;
  bool profiling = false;
  std::chrono::steady_clock::time_point profile_start;
};

using Shapes = std::vector<std::vector<int64_t>>;

// Checks the input shapes against the specs (static dimensions equal, symbols within their bounds
// and equal wherever they occur) and derives the output shapes. Returns "" or what is wrong.
static std::string BindShapes(const dt_model* model, const Shapes& inputs, Shapes* outputs) {
  std::map<std::string, int64_t> values;
  for (size_t i = 0; i < model->inputs.size(); ++i) {
    const TensorSpec& spec = model->inputs[i];
    std::string what = "input '" + spec.name + "' ";
    if (inputs[i].size() != spec.shape.size()) {
      return what + "has " + std::to_string(inputs[i].size()) + " dimensions, the model takes " +
             std::to_string(spec.shape.size()) + " " + SpecText(spec);
    }
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      int64_t extent = inputs[i][d];
      std::string dim = "dimension " + std::to_string(d);
      if (spec.symbols[d].empty()) {
        if (extent != spec.shape[d]) {
          return what + dim + " is " + std::to_string(extent) + " but the model takes " + SpecText(spec);
        }
        continue;
      }
      const std::string& symbol = spec.symbols[d];
      if (extent < 1) return what + dim + " (" + symbol + ") is " + std::to_string(extent) + ": sizes start at 1";
      if (spec.max_shape[d] > 0 && extent > spec.max_shape[d]) {
        return what + dim + " (" + symbol + ") is " + std::to_string(extent) + ", above the package's upper bound " +
               symbol + "<=" + std::to_string(spec.max_shape[d]) + ". Split the batch, or compile with a larger bound";
      }
      auto known = values.find(symbol);
      if (known != values.end() && known->second != extent) {
        return what + dim + " (" + symbol + ") is " + std::to_string(extent) + " but " + symbol + " is " +
               std::to_string(known->second) + " in another dimension";
      }
      values[symbol] = extent;
    }
  }
  outputs->clear();
  for (const TensorSpec& spec : model->outputs) {
    std::vector<int64_t> shape;
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      if (spec.symbols[d].empty()) {
        shape.push_back(spec.shape[d]);
        continue;
      }
      auto value = values.find(spec.symbols[d]);
      if (value == values.end()) return "output '" + spec.name + "' has symbol " + spec.symbols[d] + ", which no input has";
      shape.push_back(value->second);
    }
    outputs->push_back(shape);
  }
  return "";
}

static Shapes ShapesOf(const std::vector<TensorSpec>& specs, const int64_t* const* given) {
  Shapes shapes;
  for (size_t i = 0; i < specs.size(); ++i) {
    shapes.push_back(given ? std::vector<int64_t>(given[i], given[i] + specs[i].shape.size()) : specs[i].shape);
  }
  return shapes;
}

// The static staging tensor of input i, or for a dynamic input a new aligned tensor of `shape`.
static ffi::Tensor Staging(dt_model* model, size_t i, const std::vector<int64_t>& shape) {
  if (model->staging[i].has_value()) return *model->staging[i];
  const TensorSpec& spec = model->inputs[i];
  if (model->device.device_type == kDLCPU) {
    return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), spec.dl_dtype, model->device);
  }
  return Global("runtime.TVMTensorAllocWithScope")(ffi::Shape(shape), spec.dl_dtype, model->device, nullptr)
      .cast<ffi::Tensor>();
}

// Calls main on args and checks the results against the output shapes. Caller holds model->lock.
static int Invoke(dt_model* model, const std::vector<ffi::Tensor>& args, std::vector<ffi::Tensor>* results,
                  const Shapes& output_shapes) {
  std::vector<ffi::AnyView> packed(args.begin(), args.end());
  ffi::Any result;
  model->profile_call = 0;
  model->main->CallPacked(packed.data(), static_cast<int32_t>(packed.size()), &result);
  if (auto tensor = result.try_cast<ffi::Tensor>()) {
    results->push_back(*tensor);
  } else {
    for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) results->push_back(item.cast<ffi::Tensor>());
  }
  if (results->size() != model->outputs.size()) {
    return Fail(DT_ERR_RUN, "the model returned " + std::to_string(results->size()) + " outputs, the manifest lists " +
                                std::to_string(model->outputs.size()));
  }
  for (size_t i = 0; i < results->size(); ++i) {
    if (ffi::GetDataSize((*results)[i]) != BytesOf(model->outputs[i], output_shapes[i])) {
      return Fail(DT_ERR_RUN, "output '" + model->outputs[i].name + "' has a different size than the manifest says");
    }
  }
  return DT_OK;
}

// TVM sizes its CPU thread pool from TVM_NUM_THREADS (or OMP_NUM_THREADS), else from the
// logical CPUs, halved on x86 on the assumption of two hyperthreads per core: on a machine with
// one thread per core (many cloud VMs) the model ran on half its cores, at half the speed.
// Unless the host set either, this uses the physical cores the process may run on. It must run
// before TVM starts its pool, which it does on the first parallel kernel.
static void DefaultThreadCount() {
  if (std::getenv("TVM_NUM_THREADS") != nullptr || std::getenv("OMP_NUM_THREADS") != nullptr) return;
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  std::set<std::pair<std::string, std::string>> cores;  // (package, core) of each allowed CPU
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    std::string topology = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream core_file(topology + "core_id"), package_file(topology + "physical_package_id");
    std::string core, package;
    if (!(core_file >> core) || !(package_file >> package)) {
      core = std::to_string(cpu);  // no topology: count each CPU as a core
      package = "";
    }
    cores.insert({package, core});
  }
  if (!cores.empty()) setenv("TVM_NUM_THREADS", std::to_string(cores.size()).c_str(), 0);
}

// TVM's pool defaults suit one model in a process. Each calling thread has a pool of its own, and
// TVM pins worker i of every pool to core i + 1: the busy pools of several models would share one
// core while others idle, so workers are left to the OS unless the host sets TVM_BIND_THREADS.
// An idle worker spins 300000 yields before it sleeps, taking a core from the other models' runs
// for a while after each of its runs; 1000 still bridges the gap between one kernel and the next.
static void DefaultPoolSettings() {
  DefaultThreadCount();
  setenv("TVM_BIND_THREADS", "0", 0);
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "1000", 0);
}

// ---- Sharing the CPU cores among the busy models (DT_SHARE_FAIR in deploytool.h) ----
// TVM gives each calling thread a pool of its own, each sized to all the cores: two threads running
// models at once ran twice as many threads as cores, and the bigger model took the cores.

namespace {

// A model stays busy this long after a run: between two runs of a model busy in a loop, the calling
// thread may wait for a core for some milliseconds, and another model starting a run then would
// take every core for its whole run.
constexpr auto kBusyAfterRun = std::chrono::milliseconds(20);

std::mutex g_cpu_models_mutex;
std::vector<dt_model*> g_cpu_models;  // the loaded CPU models, for counting the busy ones
thread_local int t_pool_threads = 0;  // threads the calling thread's TVM pool was last set to use

// The thread count TVM sizes each pool to (after DefaultThreadCount).
int PoolSize() {
  const char* value = std::getenv("TVM_NUM_THREADS");
  if (value == nullptr) value = std::getenv("OMP_NUM_THREADS");
  return std::max(value ? std::atoi(value) : 1, 1);
}

// Sets how many threads the calling thread's next parallel kernels use (reconfiguring only on a change).
void UseThreads(int threads) {
  if (t_pool_threads == threads) return;
  static const ffi::Function configure = Global("runtime.config_threadpool");
  const int kBigCores = 1;  // ThreadGroup::kBig: all cores on a machine without big.LITTLE
  configure(kBigCores, threads);
  t_pool_threads = threads;
}

}  // namespace

// Marks `model` running while it lives (a CPU model) and sets the calling thread's threads for the run.
class CpuShare {
 public:
  explicit CpuShare(dt_model* model);
  ~CpuShare();
  CpuShare(const CpuShare&) = delete;
  CpuShare& operator=(const CpuShare&) = delete;

 private:
  dt_model* model_;
};

CpuShare::CpuShare(dt_model* model) : model_(model->device.device_type == kDLCPU ? model : nullptr) {
  if (model_ == nullptr) return;
  int busy = 0;
  {
    std::lock_guard<std::mutex> guard(g_cpu_models_mutex);
    auto now = std::chrono::steady_clock::now();
    for (const dt_model* other : g_cpu_models) {
      const CpuActivity& activity = other->activity;
      busy += other == model_ || activity.running || now - activity.last_end < kBusyAfterRun;
    }
    model_->activity.running = true;
  }
  int threads = model_->threads;
  if (model_->share == DT_SHARE_FAIR) threads = std::max(1, std::min(threads, model_->pool / std::max(busy, 1)));
  UseThreads(threads);
}

CpuShare::~CpuShare() {
  if (model_ == nullptr) return;
  std::lock_guard<std::mutex> guard(g_cpu_models_mutex);
  model_->activity.running = false;
  model_->activity.last_end = std::chrono::steady_clock::now();
}

// dt_load's steps, in the order it takes them. The int ones return DT_OK or Fail's code.
namespace {

// What manifest.json's "runtime" (and file_sizes) says about where the package runs.
struct RuntimeSpec {
  std::string arch;                       // x86_64, aarch64
  std::vector<std::string> cpu_features;  // that the kernels use
  std::string device = "cpu";             // cpu or cuda
  std::string cuda_arch;                  // sm_XY for a CUDA package
  int64_t model_size = -1;                // bytes of model.so

  bool on_cuda() const { return device == "cuda"; }
};

// The package folder as an absolute path without symbolic links.
int ResolvePackageDir(const char* package_dir, std::string* dir) {
  char resolved[PATH_MAX];
  if (realpath(package_dir, resolved) == nullptr) {
    return Fail(DT_ERR_PACKAGE, std::string("package folder not found: ") + package_dir);
  }
  *dir = resolved;
  return DT_OK;
}

// The RuntimeSpec of a parsed manifest; throws on a missing or mistyped field.
RuntimeSpec ParseRuntime(const ffi::json::Object& manifest) {
  RuntimeSpec spec;
  ffi::json::Object runtime = AsObject(Field(manifest, "runtime"), "runtime");
  spec.arch = std::string(Field(runtime, "arch").cast<ffi::String>());
  for (const ffi::Any& feature : Field(runtime, "cpu_features").cast<ffi::json::Array>()) {
    spec.cpu_features.push_back(std::string(feature.cast<ffi::String>()));
  }
  if (auto value = runtime.Get(ffi::String("device"))) spec.device = std::string(value->cast<ffi::String>());
  if (auto cuda = runtime.Get(ffi::String("cuda"))) {
    spec.cuda_arch = std::string(Field(AsObject(*cuda, "runtime.cuda"), "arch").cast<ffi::String>());
  }
  spec.model_size = Field(AsObject(Field(manifest, "file_sizes"), "file_sizes"), "model.so").cast<int64_t>();
  return spec;
}

// Reads model->dir/manifest.json into the model (the manifest, the tensor specs) and `runtime`.
int ReadPackageManifest(dt_model* model, RuntimeSpec* runtime) {
  const std::string& dir = model->dir;
  std::string text = ReadFile(dir + "/manifest.json");
  if (text.empty()) {
    return Fail(DT_ERR_PACKAGE, "not a deploytool package: " + dir + "/manifest.json is missing or empty");
  }
  try {
    ffi::String parse_error;
    ffi::json::Object manifest = AsObject(ffi::json::Parse(text, &parse_error), "manifest.json");
    model->manifest = manifest;
    model->inputs = ParseTensorSpecs(Field(manifest, "inputs"));
    model->outputs = ParseTensorSpecs(Field(manifest, "outputs"));
    *runtime = ParseRuntime(manifest);
  } catch (const std::exception& error) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: manifest.json in " + dir + ": " + error.what());
  }
  return DT_OK;
}

// AMX kernels ask Linux for the tile state on first use; ask here too, so that a kernel that
// does not grant it (before 5.16) gets an error rather than a fault at the first tile load.
int CheckAmxGranted(const RuntimeSpec& runtime) {
#if defined(__x86_64__)
  const std::vector<std::string>& features = runtime.cpu_features;
  if (std::find(features.begin(), features.end(), "amx_tile") != features.end() &&
      syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
    return Fail(DT_ERR_PLATFORM, std::string("Linux does not grant this process the AMX tiles the package was "
                                             "compiled for (") + std::strerror(errno) +
                                     "): they need Linux 5.16 or later. Compile for a target without AMX, "
                                     "e.g. x86_64-avx512-bf16");
  }
#endif
  return DT_OK;
}

// This machine's architecture and CPU features against the package's.
int CheckMachine(const RuntimeSpec& runtime) {
  if (runtime.arch != MachineArch()) {
    return Fail(DT_ERR_PLATFORM, "the package was compiled for " + runtime.arch + " but this machine is " +
                                     MachineArch() + ". Compile it for this machine's target");
  }
  std::set<std::string> flags = MachineCpuFlags();
  std::string missing;
  for (const std::string& feature : runtime.cpu_features) {
    if (!flags.count(feature)) missing += (missing.empty() ? "" : " ") + feature;
  }
  if (!missing.empty()) {
    return Fail(DT_ERR_PLATFORM, "this CPU lacks features the package was compiled for (" + missing +
                                     "). Compile for a more portable target, e.g. " +
                                     (std::strcmp(MachineArch(), "aarch64") == 0 ? "arm64" : "x86_64-avx2"));
  }
  return CheckAmxGranted(runtime);
}

// dlopen of a truncated library can die of SIGBUS, so check the size first (dt_verify checks content).
int CheckLibrarySize(const std::string& dir, int64_t model_size) {
  std::ifstream library_file(dir + "/model.so", std::ios::binary | std::ios::ate);
  if (!library_file || static_cast<int64_t>(library_file.tellg()) != model_size) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + dir + "/model.so is missing or has the wrong size"
                                " (truncated?). Copy the package again");
  }
  return DT_OK;
}

// ---- Integrity: manifest.json's "files" (name -> sha256) checked before a file is used ----

// The largest file a package may list (a model.so of a large model is a few GB).
constexpr int64_t kMaxPackageFile = int64_t(64) << 30;

// True unless DEPLOYTOOL_SKIP_VERIFY=1: the user verifies the package elsewhere (e.g. a signed image).
bool VerifyEnabled() {
  const char* skip = std::getenv("DEPLOYTOOL_SKIP_VERIFY");
  return !(skip != nullptr && std::strcmp(skip, "1") == 0);
}

// Why `name` is not a path inside the package ("" when it is): relative, no "..", no empty parts.
std::string UnsafeName(const std::string& name) {
  if (name.empty()) return "an empty file name";
  if (name[0] == '/') return "an absolute path";
  if (name.size() > 1024) return "a name over 1024 characters";
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    std::string part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return "a path leaving the package or with empty parts";
    start = end + 1;
  }
  if (name.find('\0') != std::string::npos || name.find('\\') != std::string::npos) return "an odd character";
  return "";
}

bool IsHexDigest(const std::string& digest) {
  if (digest.size() != 64) return false;
  for (char c : digest) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// manifest.json's "files", checked as data: names inside the package, sha256 digests, model.so listed.
// Throws std::runtime_error naming the bad entry.
std::map<std::string, std::string> PackageFiles(const ffi::json::Object& manifest) {
  auto value = manifest.Get(ffi::String("files"));
  if (!value.has_value()) throw std::runtime_error("manifest.json has no \"files\" (the files' sha256)");
  std::map<std::string, std::string> files;
  for (const auto& entry : AsObject(*value, "files")) {
    std::string name = std::string(entry.first.cast<ffi::String>());
    std::string why = UnsafeName(name);
    if (!why.empty()) throw std::runtime_error("manifest.json \"files\" lists '" + name + "', " + why);
    auto digest = entry.second.try_cast<ffi::String>();
    if (!digest.has_value() || !IsHexDigest(std::string(*digest))) {
      throw std::runtime_error("manifest.json \"files\" has no sha256 (64 lowercase hex digits) for " + name);
    }
    files[name] = std::string(*digest);
  }
  if (!files.count("model.so")) throw std::runtime_error("manifest.json \"files\" does not list model.so");
  return files;
}

// Files already hashed in this process, by identity; a changed file gets another identity (ctime moves on
// any write or rename onto it, and cannot be set back), so it is hashed again.
struct FileIdentity {
  dev_t dev;
  ino_t ino;
  off_t size;
  int64_t mtime_ns, ctime_ns;
  bool operator<(const FileIdentity& o) const {
    return std::tie(dev, ino, size, mtime_ns, ctime_ns) < std::tie(o.dev, o.ino, o.size, o.mtime_ns, o.ctime_ns);
  }
};
std::mutex g_verified_mutex;
std::map<FileIdentity, std::string> g_verified;  // identity -> sha256 it had

// Checks dir/name against its sha256 in `files`: a regular file of bounded size with that digest.
// DT_ERR_PACKAGE naming the file otherwise.
int VerifyFile(const std::string& dir, const std::map<std::string, std::string>& files, const std::string& name) {
  auto listed = files.find(name);
  if (listed == files.end()) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + name + " is not listed in manifest.json \"files\"."
                                " Compile the package again");
  }
  std::string path = dir + "/" + name;
  struct stat info;
  if (stat(path.c_str(), &info) != 0) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + path + " is missing. Copy the package again");
  }
  if (!S_ISREG(info.st_mode)) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + path + " is not a regular file. Copy the package again");
  }
  if (info.st_size > kMaxPackageFile) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + path + " is larger than 64 GiB");
  }
  FileIdentity id{info.st_dev, info.st_ino, info.st_size,
                  int64_t(info.st_mtim.tv_sec) * 1000000000 + info.st_mtim.tv_nsec,
                  int64_t(info.st_ctim.tv_sec) * 1000000000 + info.st_ctim.tv_nsec};
  std::string actual;
  {
    std::lock_guard<std::mutex> lock(g_verified_mutex);
    auto known = g_verified.find(id);
    if (known != g_verified.end()) actual = known->second;
  }
  if (actual.empty()) {
    actual = sha256::OfFile(path);
    if (actual.empty()) return Fail(DT_ERR_PACKAGE, "corrupted package: cannot read " + path);
    std::lock_guard<std::mutex> lock(g_verified_mutex);
    if (g_verified.size() > 4096) g_verified.clear();
    g_verified[id] = actual;
  }
  if (actual != listed->second) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + name + " does not match its sha256 in manifest.json"
                                " (truncated or modified). Copy the package again, or set DEPLOYTOOL_SKIP_VERIFY=1"
                                " if you verify packages another way");
  }
  return DT_OK;
}

// model.so's sha256 against the manifest, before it is dlopen'ed (skipped with DEPLOYTOOL_SKIP_VERIFY=1).
int VerifyLibrary(const dt_model* model) {
  if (!VerifyEnabled()) return DT_OK;
  std::map<std::string, std::string> files;
  try {
    files = PackageFiles(*model->manifest);
  } catch (const std::exception& error) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: " + std::string(error.what()) + ". Compile the package again");
  }
  return VerifyFile(model->dir, files, "model.so");
}

// The device to load on: `requested` (already parsed into *dl_device) or, when it is null or "", the
// manifest's runtime.device. Either must be of the kind the package was compiled for.
int ChooseDevice(const char* requested, const RuntimeSpec& runtime, DLDevice* dl_device) {
  bool package_device = requested == nullptr || requested[0] == '\0';
  if (package_device && !ParseDevice(runtime.device.c_str(), dl_device)) {
    return Fail(DT_ERR_PACKAGE, "corrupted package: unknown runtime.device '" + runtime.device + "' in manifest.json");
  }
  if (runtime.on_cuda() != (dl_device->device_type == kDLCUDA)) {
    return Fail(DT_ERR_ARGUMENT, "the package was compiled for " + runtime.device + ", not for device '" +
                                     std::string(requested) + "'. " +
                                     (runtime.on_cuda() ? "Load it with device cuda or cuda:N"
                                                        : "Load it with device cpu, or compile it for a CUDA target"));
  }
  return DT_OK;
}

// Loads model.so and starts its Relax VM on model->device, with pooled allocators. Throws on failure.
void StartVm(dt_model* model) {
  DLDevice device = model->device;
  ffi::Module library = ffi::Module::LoadFromFile(model->dir + "/model.so");
  auto load = library->GetFunction("vm_load_executable");
  if (!load.has_value()) throw std::runtime_error("model.so is not a Relax VM executable");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  auto init = vm->GetFunction("vm_initialization");
  const int pooled_allocator = 2;
  (*init)(static_cast<int>(device.device_type), device.device_id, pooled_allocator,
          static_cast<int>(kDLCPU), 0, pooled_allocator);
  auto main = vm->GetFunction("main");
  if (!main.has_value()) throw std::runtime_error("model.so has no 'main' function");
  model->library = library;
  model->vm = vm;
  model->main = *main;
}

// An aligned staging tensor per static input (see dt_model::staging); sets model->dynamic.
void AllocateStaging(dt_model* model) {
  DLDevice device = model->device;
  for (const TensorSpec& spec : model->inputs) {
    model->dynamic = model->dynamic || spec.dynamic;
    if (spec.dynamic) {
      model->staging.push_back(std::nullopt);  // allocated per run, at the run's shape
    } else if (device.device_type == kDLCPU) {
      model->staging.push_back(ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(spec.shape), spec.dl_dtype,
                                                        device));
    } else {  // device memory, through TVM's device API
      model->staging.push_back(Global("runtime.TVMTensorAllocWithScope")(ffi::Shape(spec.shape), spec.dl_dtype,
                                                                        device, nullptr)
                                   .cast<ffi::Tensor>());
    }
  }
}

// Starts the VM on the device and readies the staging tensors.
int LoadExecutable(dt_model* model) {
  try {
    if (model->device.device_type != kDLCPU) SelectDevice(model->device);
    StartVm(model);
    AllocateStaging(model);
  } catch (const std::exception& error) {
    return Fail(DT_ERR_PACKAGE, "cannot load " + model->dir + "/model.so: " + error.what());
  }
  return DT_OK;
}

// dt_load_ex's options with the defaults for what they leave out; DT_ERR_ARGUMENT when invalid.
int ReadOptions(const dt_options* options, dt_options* out) {
  std::memset(out, 0, sizeof(*out));
  out->size = sizeof(*out);
  if (options == nullptr) return DT_OK;
  const size_t least = offsetof(dt_options, threads) + sizeof(int);
  if (options->size < least || options->size > sizeof(dt_options)) {
    return Fail(DT_ERR_ARGUMENT, "dt_load_ex: dt_options.size is " + std::to_string(options->size) +
                                     ", not sizeof(dt_options) of this library (" + std::to_string(sizeof(dt_options)) +
                                     "). Set size = sizeof(dt_options), from this package's deploytool.h");
  }
  std::memcpy(out, options, options->size);
  if (out->threads < 0) {
    return Fail(DT_ERR_ARGUMENT, "dt_load_ex: threads is " + std::to_string(out->threads) +
                                     ". Pass 0 (all the cores) or a count of threads");
  }
  if (out->share != DT_SHARE_FAIR && out->share != DT_SHARE_NONE) {
    return Fail(DT_ERR_ARGUMENT, "dt_load_ex: unknown share policy " + std::to_string(out->share) +
                                     ". Pass DT_SHARE_FAIR or DT_SHARE_NONE");
  }
  return DT_OK;
}

}  // namespace

extern "C" {

const char* dt_last_error(void) { return g_last_error.c_str(); }

int dt_load(const char* package_dir, const char* device, dt_model** out) {
  return dt_load_ex(package_dir, device, nullptr, out);
}

int dt_load_ex(const char* package_dir, const char* device, const dt_options* options, dt_model** out) {
  if (package_dir == nullptr || out == nullptr) return Fail(DT_ERR_ARGUMENT, "dt_load: null argument");
  *out = nullptr;
  dt_options given;
  int code = ReadOptions(options, &given);
  if (code != DT_OK) return code;
  DefaultPoolSettings();
  DLDevice dl_device{kDLCPU, 0};
  bool package_device = device == nullptr || device[0] == '\0';  // the manifest's runtime.device
  if (!package_device && !ParseDevice(device, &dl_device)) {
    return Fail(DT_ERR_ARGUMENT, std::string("unknown device '") + device + "'. Use cpu, cpu:N, cuda or cuda:N");
  }
  auto model = std::make_unique<dt_model>();
  model->device = dl_device;
  model->pool = PoolSize();
  model->threads = given.threads == 0 ? model->pool : std::min(given.threads, model->pool);
  model->share = given.share;
  RuntimeSpec runtime;
  code = ResolvePackageDir(package_dir, &model->dir);
  if (code == DT_OK) code = ReadPackageManifest(model.get(), &runtime);
  if (code == DT_OK) code = CheckMachine(runtime);
  if (code == DT_OK) code = CheckLibrarySize(model->dir, runtime.model_size);
  if (code == DT_OK) code = VerifyLibrary(model.get());
  if (code == DT_OK) code = ChooseDevice(device, runtime, &model->device);
  if (code == DT_OK && runtime.on_cuda()) code = PrepareCuda(model->dir, model->device, runtime.cuda_arch);
  if (code == DT_OK) code = LoadExecutable(model.get());
  if (code != DT_OK) return code;
  if (model->device.device_type == kDLCPU) {
    std::lock_guard<std::mutex> guard(g_cpu_models_mutex);
    g_cpu_models.push_back(model.get());
  }
  *out = model.release();
  return DT_OK;
}

void dt_free(dt_model* model) {
  if (model == nullptr) return;
  {
    std::lock_guard<std::mutex> guard(g_cpu_models_mutex);
    g_cpu_models.erase(std::remove(g_cpu_models.begin(), g_cpu_models.end(), model), g_cpu_models.end());
  }
  delete model;
}

int dt_num_inputs(const dt_model* model) { return model ? static_cast<int>(model->inputs.size()) : -1; }
int dt_num_outputs(const dt_model* model) { return model ? static_cast<int>(model->outputs.size()) : -1; }

int dt_input_info(const dt_model* model, int index, dt_tensor_info* out) {
  if (!model || !out || index < 0 || index >= static_cast<int>(model->inputs.size())) {
    return Fail(DT_ERR_ARGUMENT, "dt_input_info: no input " + std::to_string(index));
  }
  FillInfo(model->inputs[index], out);
  return DT_OK;
}

int dt_output_info(const dt_model* model, int index, dt_tensor_info* out) {
  if (!model || !out || index < 0 || index >= static_cast<int>(model->outputs.size())) {
    return Fail(DT_ERR_ARGUMENT, "dt_output_info: no output " + std::to_string(index));
  }
  FillInfo(model->outputs[index], out);
  return DT_OK;
}

}  // extern "C"

// dt_run and dt_run_shaped: `shapes` are the input shapes (checked), `what` names the call.
static int RunShaped(dt_model* model, const Shapes& shapes, const void* const* inputs, void* const* outputs,
                     const std::string& what) {
  Shapes output_shapes;
  std::string wrong = BindShapes(model, shapes, &output_shapes);
  if (!wrong.empty()) return Fail(DT_ERR_ARGUMENT, what + ": " + wrong);
  std::lock_guard<std::mutex> guard(model->lock);
  try {
    CpuShare share(model);
    bool on_cpu = model->device.device_type == kDLCPU;
    if (!on_cpu) SelectDevice(model->device);
    std::vector<ffi::Tensor> args;
    args.reserve(model->inputs.size());
    for (size_t i = 0; i < model->inputs.size(); ++i) {
      const TensorSpec& spec = model->inputs[i];
      size_t nbytes = BytesOf(spec, shapes[i]);
      void* data = const_cast<void*>(inputs[i]);
      if (data == nullptr) return Fail(DT_ERR_ARGUMENT, what + ": input '" + spec.name + "' is null");
      if (!on_cpu) {  // host -> device (synchronous)
        ffi::Tensor staging = Staging(model, i, shapes[i]);
        Global("runtime.TVMTensorCopyFromBytes")(staging, data, nbytes);
        args.push_back(staging);
      } else if (reinterpret_cast<uintptr_t>(data) % 64 == 0) {
        args.push_back(ffi::Tensor::FromNDAlloc(BorrowedAlloc{data}, ffi::Shape(shapes[i]),
                                                spec.dl_dtype, model->device));
      } else {
        ffi::Tensor staging = Staging(model, i, shapes[i]);
        std::memcpy(staging.data_ptr(), data, nbytes);
        args.push_back(staging);
      }
    }
    std::vector<ffi::Tensor> results;
    int code = Invoke(model, args, &results, output_shapes);
    if (code != DT_OK) return code;
    for (size_t i = 0; i < results.size(); ++i) {
      const TensorSpec& spec = model->outputs[i];
      size_t nbytes = BytesOf(spec, output_shapes[i]);
      if (outputs[i] == nullptr) return Fail(DT_ERR_ARGUMENT, what + ": output '" + spec.name + "' is null");
      if (on_cpu) {
        std::memcpy(outputs[i], results[i].data_ptr(), nbytes);
      } else {  // device -> host, waits for the kernels
        Global("runtime.TVMTensorCopyToBytes")(results[i], outputs[i], nbytes);
      }
    }
  } catch (const std::exception& error) {
    return Fail(DT_ERR_RUN, std::string("running the model failed: ") + error.what());
  }
  return DT_OK;
}

extern "C" {

int dt_run(dt_model* model, const void* const* inputs, void* const* outputs) {
  if (!model || !inputs || !outputs) return Fail(DT_ERR_ARGUMENT, "dt_run: null argument");
  if (model->dynamic) {
    std::string specs;
    for (const TensorSpec& spec : model->inputs) specs += (specs.empty() ? "" : ", ") + spec.name + " " + SpecText(spec);
    return Fail(DT_ERR_ARGUMENT, "dt_run: the package has symbolic dimensions (" + specs +
                                     "). Run it with dt_run_shaped, giving the input shapes");
  }
  return RunShaped(model, ShapesOf(model->inputs, nullptr), inputs, outputs, "dt_run");
}

int dt_output_shapes(const dt_model* model, const int64_t* const* input_shapes, int64_t* const* output_shapes) {
  if (!model || !input_shapes || !output_shapes) return Fail(DT_ERR_ARGUMENT, "dt_output_shapes: null argument");
  for (size_t i = 0; i < model->inputs.size(); ++i) {
    if (input_shapes[i] == nullptr && !model->inputs[i].shape.empty()) {
      return Fail(DT_ERR_ARGUMENT, "dt_output_shapes: the shape of input '" + model->inputs[i].name + "' is null");
    }
  }
  Shapes shapes;
  std::string wrong = BindShapes(model, ShapesOf(model->inputs, input_shapes), &shapes);
  if (!wrong.empty()) return Fail(DT_ERR_ARGUMENT, "dt_output_shapes: " + wrong);
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (output_shapes[i] == nullptr && !shapes[i].empty()) {
      return Fail(DT_ERR_ARGUMENT, "dt_output_shapes: output_shapes[" + std::to_string(i) + "] is null");
    }
    std::copy(shapes[i].begin(), shapes[i].end(), output_shapes[i]);
  }
  return DT_OK;
}

int dt_run_shaped(dt_model* model, const int64_t* const* input_shapes, const void* const* inputs,
                  void* const* outputs) {
  if (!model || !input_shapes || !inputs || !outputs) return Fail(DT_ERR_ARGUMENT, "dt_run_shaped: null argument");
  for (size_t i = 0; i < model->inputs.size(); ++i) {
    if (input_shapes[i] == nullptr && !model->inputs[i].shape.empty()) {
      return Fail(DT_ERR_ARGUMENT, "dt_run_shaped: the shape of input '" + model->inputs[i].name + "' is null");
    }
  }
  return RunShaped(model, ShapesOf(model->inputs, input_shapes), inputs, outputs, "dt_run_shaped");
}

int dt_device(const dt_model* model, DLDevice* out) {
  if (!model || !out) return Fail(DT_ERR_ARGUMENT, "dt_device: null argument");
  *out = model->device;
  return DT_OK;
}

int dt_run_dlpack(dt_model* model, const DLTensor* const* inputs, DLManagedTensorVersioned** outputs) {
  if (!model || !inputs || !outputs) return Fail(DT_ERR_ARGUMENT, "dt_run_dlpack: null argument");
  Shapes shapes, output_shapes;
  for (size_t i = 0; i < model->inputs.size(); ++i) {
    const TensorSpec& spec = model->inputs[i];
    if (inputs[i] == nullptr) return Fail(DT_ERR_ARGUMENT, "dt_run_dlpack: input '" + spec.name + "' is null");
    shapes.emplace_back(inputs[i]->shape, inputs[i]->shape + inputs[i]->ndim);
    if (!spec.dynamic && shapes.back() != spec.shape) {
      return Fail(DT_ERR_ARGUMENT, "dt_run_dlpack: input '" + spec.name +
                                       "' does not have the dtype and shape dt_input_info gives (" + spec.dtype +
                                       " " + SpecText(spec) + ")");
    }
  }
  std::string wrong = BindShapes(model, shapes, &output_shapes);
  if (!wrong.empty()) return Fail(DT_ERR_ARGUMENT, "dt_run_dlpack: " + wrong);
  std::lock_guard<std::mutex> guard(model->lock);
  try {
    CpuShare share(model);
    if (model->device.device_type != kDLCPU) SelectDevice(model->device);
    std::vector<ffi::Tensor> args;
    for (size_t i = 0; i < model->inputs.size(); ++i) {
      const TensorSpec& spec = model->inputs[i];
      const DLTensor* tensor = inputs[i];
      std::string what = "dt_run_dlpack: input '" + spec.name + "' ";
      if (tensor == nullptr || tensor->data == nullptr) return Fail(DT_ERR_ARGUMENT, what + "is null");
      if (tensor->device.device_type != model->device.device_type || tensor->device.device_id != model->device.device_id) {
        return Fail(DT_ERR_ARGUMENT, what + "is on another device than the model (" + DeviceText(model->device) + ")");
      }
      if (tensor->dtype.code != spec.dl_dtype.code || tensor->dtype.bits != spec.dl_dtype.bits ||
          tensor->dtype.lanes != spec.dl_dtype.lanes) {
        return Fail(DT_ERR_ARGUMENT, what + "does not have the dtype and shape dt_input_info gives (" + spec.dtype + ")");
      }
      if (!ffi::IsContiguous(*tensor)) return Fail(DT_ERR_ARGUMENT, what + "is not contiguous (row-major)");
      void* data = static_cast<char*>(tensor->data) + tensor->byte_offset;
      ffi::Tensor borrowed = ffi::Tensor::FromNDAlloc(BorrowedAlloc{data}, ffi::Shape(shapes[i]),
                                                      spec.dl_dtype, model->device);
      if (reinterpret_cast<uintptr_t>(data) % 64 == 0) {
        args.push_back(borrowed);
      } else {  // kernels may assume aligned arguments: copy on the device
        ffi::Tensor staging = Staging(model, i, shapes[i]);
        Global("runtime.TVMTensorCopyFromTo")(borrowed, staging);
        args.push_back(staging);
      }
    }
    std::vector<ffi::Tensor> results;
    int code = Invoke(model, args, &results, output_shapes);
    if (code != DT_OK) return code;
    if (model->device.device_type != kDLCPU) {
      Global("runtime.Device_StreamSync")(model->device, static_cast<int64_t>(0));
    }
    for (size_t i = 0; i < results.size(); ++i) outputs[i] = results[i].ToDLPackVersioned();
  } catch (const std::exception& error) {
    return Fail(DT_ERR_RUN, std::string("running the model failed: ") + error.what());
  }
  return DT_OK;
}

int dt_profile(dt_model* model, int enable) {
  if (!model) return Fail(DT_ERR_ARGUMENT, "dt_profile: null model");
  if (model->device.device_type != kDLCPU) {
    return Fail(DT_ERR_ARGUMENT, "dt_profile: per-kernel profiles are for CPU packages only (a GPU runs its "
                                 "kernels asynchronously); profile the GPU with Nsight Systems");
  }
  std::lock_guard<std::mutex> guard(model->lock);
  try {
    model->profiling = enable != 0;
    if (!enable) {
      (*(*model->vm)->GetFunction("set_instrument"))(ffi::Any());  // no instrument: no cost
      return DT_OK;
    }
    model->profile.clear();
    // The VM calls this before and after each function it runs (kernels and its own builtins).
    auto instrument = ffi::Function::FromPacked([model](ffi::PackedArgs args, ffi::Any* rv) {
      *rv = 0;  // carry on as usual
      std::string name = args[1].cast<ffi::String>();
      if (!model->profiling || name.rfind("vm.builtin.", 0) == 0) return;
      if (args[2].cast<bool>()) {
        model->profile_start = std::chrono::steady_clock::now();
        return;
      }
      double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                            model->profile_start).count();
      size_t call = model->profile_call++;
      if (call >= model->profile.size()) model->profile.push_back({name, {}});
      if (model->profile[call].first == name) model->profile[call].second.push_back(us);
    });
    (*(*model->vm)->GetFunction("set_instrument"))(instrument);
  } catch (const std::exception& error) {
    return Fail(DT_ERR_RUN, std::string("dt_profile: ") + error.what());
  }
  return DT_OK;
}

int dt_profile_report(dt_model* model, char* report, size_t report_size) {
  if (!model || !report || report_size == 0) return Fail(DT_ERR_ARGUMENT, "dt_profile_report: null argument");
  std::lock_guard<std::mutex> guard(model->lock);
  std::string text;
  for (auto& [name, times] : model->profile) {
    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    char line[64];
    std::snprintf(line, sizeof(line), "%.3f %zu ", sorted.empty() ? 0.0 : sorted[sorted.size() / 2], sorted.size());
    text += line + name + "\n";
  }
  if (text.size() + 1 > report_size) {
    return Fail(DT_ERR_ARGUMENT, "dt_profile_report: the report needs " + std::to_string(text.size() + 1) +
                                     " bytes, the buffer has " + std::to_string(report_size));
  }
  std::memcpy(report, text.c_str(), text.size() + 1);
  return DT_OK;
}

int dt_verify(const char* package_dir) {
  if (package_dir == nullptr) return Fail(DT_ERR_ARGUMENT, "dt_verify: null argument");
  std::string dir = package_dir;
  std::map<std::string, std::string> files;
  try {
    files = PackageFiles(ReadManifest(dir));
  } catch (const std::exception& error) {
    return Fail(DT_ERR_PACKAGE, std::string("corrupted package: ") + error.what());
  }
  for (const auto& entry : files) {
    int code = VerifyFile(dir, files, entry.first);
    if (code != DT_OK) return code;
  }
  return DT_OK;
}

int dt_self_test(dt_model* model, char* report, size_t report_size) {
  if (!model) return Fail(DT_ERR_ARGUMENT, "dt_self_test: null model");
  std::string text, failures;
  try {
    auto self_test = model->manifest->Get(ffi::String("self_test"));
    if (!self_test.has_value() || self_test->type_index() == ffi::TypeIndex::kTVMFFINone) {
      return Fail(DT_ERR_PACKAGE, "the package carries no test vectors. Compile it again with deploytool");
    }
    ffi::json::Object test = AsObject(*self_test, "self_test");
    double atol = Field(test, "atol").cast<double>(), rtol = Field(test, "rtol").cast<double>();
    auto files = [&](const char* key) {
      std::vector<std::string> paths;
      for (const ffi::Any& item : Field(test, key).cast<ffi::json::Array>()) {
        paths.push_back(model->dir + "/" + std::string(Field(AsObject(item, key), "file").cast<ffi::String>()));
      }
      return paths;
    };
    std::vector<std::string> input_files = files("inputs"), output_files = files("outputs");
    // The test vectors lie inside the package and are checked like model.so before they are read.
    std::map<std::string, std::string> listed;
    if (VerifyEnabled()) listed = PackageFiles(*model->manifest);
    for (const auto* group : {&input_files, &output_files}) {
      for (const std::string& path : *group) {
        std::string name = path.substr(model->dir.size() + 1);
        std::string why = UnsafeName(name);
        if (!why.empty()) throw std::runtime_error("self_test lists '" + name + "', " + why);
        if (VerifyEnabled() && VerifyFile(model->dir, listed, name) != DT_OK) return DT_ERR_PACKAGE;
      }
    }
    if (input_files.size() != model->inputs.size() || output_files.size() != model->outputs.size()) {
      throw std::runtime_error("self_test lists a different number of tensors than the model has");
    }
    std::vector<npy::Array> inputs, expected;
    std::vector<const void*> in;
    Shapes shapes, output_shapes;  // the test vectors' own (a dynamic package's at one size)
    for (const auto& path : input_files) {
      inputs.push_back(npy::Load(path));
      in.push_back(inputs.back().data.data());
      shapes.push_back(inputs.back().shape);
    }
    std::string wrong = BindShapes(model, shapes, &output_shapes);
    if (!wrong.empty()) throw std::runtime_error("the test vectors do not fit the model: " + wrong);
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].data.size() != BytesOf(model->inputs[i], shapes[i])) {
        throw std::runtime_error(input_files[i] + " has the wrong size");
      }
    }
    std::vector<std::vector<char>> outputs;
    std::vector<void*> out;
    for (size_t o = 0; o < model->outputs.size(); ++o) outputs.emplace_back(BytesOf(model->outputs[o], output_shapes[o]));
    for (auto& buffer : outputs) out.push_back(buffer.data());
    int code = RunShaped(model, shapes, in.data(), out.data(), "dt_self_test");
    if (code != DT_OK) return code;
    for (size_t o = 0; o < outputs.size(); ++o) {
      const TensorSpec& spec = model->outputs[o];
      size_t nbytes = outputs[o].size();
      npy::Array reference = npy::Load(output_files[o]);
      if (reference.data.size() != nbytes) throw std::runtime_error(output_files[o] + " has the wrong size");
      size_t count = nbytes / ((spec.dl_dtype.bits + 7) / 8);
      double worst = 0, worst_excess = -1;
      size_t worst_at = 0;
      bool passed = true;
      for (size_t i = 0; i < count; ++i) {
        double a = ValueAt(outputs[o].data(), spec.dtype, i), r = ValueAt(reference.data.data(), spec.dtype, i);
        double diff = (std::isinf(a) && a == r) ? 0.0 : std::fabs(a - r);
        if (std::isnan(diff)) diff = INFINITY;
        double excess = diff - rtol * (std::isfinite(r) ? std::fabs(r) : 0.0);
        if (std::isnan(a) || std::isnan(r) || !(excess <= atol)) passed = false;
        if (diff > worst || std::isnan(a) || std::isnan(r)) worst = std::isnan(a) || std::isnan(r) ? NAN : diff;
        if (excess > worst_excess) {
          worst_excess = excess;
          worst_at = i;
        }
      }
      char line[512];
      std::snprintf(line, sizeof(line), "%s: max abs error %.3g (worst at flat index %zu) %s\n", spec.name.c_str(),
                    worst, worst_at, passed ? "PASSED" : "FAILED");
      text += line;
      if (!passed) failures += (failures.empty() ? "" : ", ") + spec.name;
    }
    char rule[128];
    std::snprintf(rule, sizeof(rule), "self-test %s (atol %g, rtol %g)\n", failures.empty() ? "PASSED" : "FAILED", atol,
                  rtol);
    text += rule;
  } catch (const std::exception& error) {
    return Fail(DT_ERR_PACKAGE, std::string("the self-test could not run: ") + error.what());
  }
  if (report != nullptr && report_size > 0) {
    std::snprintf(report, report_size, "%s", text.c_str());
  }
  if (!failures.empty()) return Fail(DT_ERR_MISMATCH, "self-test FAILED for output(s) " + failures);
  return DT_OK;
}

}  // extern "C"
