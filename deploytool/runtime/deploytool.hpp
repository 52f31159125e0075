// deploytool C++ API: a thin RAII wrapper over the C API in deploytool.h.
#ifndef DEPLOYTOOL_HPP_
#define DEPLOYTOOL_HPP_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "deploytool.h"

namespace deploytool {

class Error : public std::runtime_error {
 public:
  Error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

struct TensorInfo {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;  // -1 for a symbolic dimension
  size_t nbytes;               // at max_shape for a dynamic tensor (0 if unbounded)
  std::vector<int64_t> max_shape;
  bool dynamic() const {
    for (int64_t d : shape) {
      if (d < 0) return true;
    }
    return false;
  }
};

using Shape = std::vector<int64_t>;

// dt_load_ex's options: threads 0 is all the cores; see DT_SHARE_FAIR in deploytool.h.
struct LoadOptions {
  int threads = 0;
  int share = DT_SHARE_FAIR;
};

class Model {
 public:
  // device: "cpu", "cuda:N"; "" means the package's own device (cpu, or cuda:0 for a CUDA package)
  explicit Model(const std::string& package_dir, const std::string& device = "") {
    Check(dt_load(package_dir.c_str(), device.c_str(), &handle_));
  }
  Model(const std::string& package_dir, const std::string& device, const LoadOptions& options) {
    dt_options given{};
    given.size = sizeof(given);
    given.threads = options.threads;
    given.share = options.share;
    Check(dt_load_ex(package_dir.c_str(), device.c_str(), &given, &handle_));
  }
  ~Model() { dt_free(handle_); }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }

  std::vector<TensorInfo> inputs() const { return Infos(dt_num_inputs(handle_), dt_input_info); }
  std::vector<TensorInfo> outputs() const { return Infos(dt_num_outputs(handle_), dt_output_info); }

  // inputs[i] and outputs[i] point to buffers of inputs()[i].nbytes and outputs()[i].nbytes.
  void run(const std::vector<const void*>& inputs, const std::vector<void*>& outputs) {
    if (inputs.size() != static_cast<size_t>(dt_num_inputs(handle_)) ||
        outputs.size() != static_cast<size_t>(dt_num_outputs(handle_))) {
      throw Error(DT_ERR_ARGUMENT, "run: wrong number of input or output buffers");
    }
    Check(dt_run(handle_, inputs.data(), outputs.data()));
  }

  // For a package with symbolic dimensions: the output shapes for these input shapes.
  std::vector<Shape> output_shapes(const std::vector<Shape>& input_shapes) const {
    std::vector<const int64_t*> in = Pointers(input_shapes, dt_num_inputs(handle_));
    std::vector<Shape> shapes;
    for (const TensorInfo& info : outputs()) shapes.emplace_back(info.shape.size());
    std::vector<int64_t*> out;
    for (Shape& shape : shapes) out.push_back(shape.data());
    Check(dt_output_shapes(handle_, in.data(), out.data()));
    return shapes;
  }

  // run at these input shapes; outputs[i] holds output_shapes(input_shapes)[i] elements.
  void run(const std::vector<Shape>& input_shapes, const std::vector<const void*>& inputs,
           const std::vector<void*>& outputs) {
    std::vector<const int64_t*> in = Pointers(input_shapes, dt_num_inputs(handle_));
    if (inputs.size() != in.size() || outputs.size() != static_cast<size_t>(dt_num_outputs(handle_))) {
      throw Error(DT_ERR_ARGUMENT, "run: wrong number of input or output buffers");
    }
    Check(dt_run_shaped(handle_, in.data(), inputs.data(), outputs.data()));
  }

  // Per-kernel profile (CPU packages; see dt_profile): profile(true) times each kernel of the runs that follow,
  // profile(false) stops; profile_report() has a line per kernel call, "<median us> <runs> <kernel>".
  void profile(bool enable) { Check(dt_profile(handle_, enable ? 1 : 0)); }
  std::string profile_report() {
    std::vector<char> report(1 << 20);
    Check(dt_profile_report(handle_, report.data(), report.size()));
    return report.data();
  }

  dt_model* handle() { return handle_; }

 private:
  static void Check(int code) {
    if (code != DT_OK) throw Error(code, dt_last_error());
  }
  std::vector<TensorInfo> Infos(int count, int (*query)(const dt_model*, int, dt_tensor_info*)) const {
    std::vector<TensorInfo> infos;
    for (int i = 0; i < count; ++i) {
      dt_tensor_info info;
      Check(query(handle_, i, &info));
      infos.push_back({info.name, info.dtype, std::vector<int64_t>(info.shape, info.shape + info.ndim),
                       info.nbytes, std::vector<int64_t>(info.max_shape, info.max_shape + info.ndim)});
    }
    return infos;
  }

  // The C API reads dt_input_info's ndim sizes from each pointer, so check the ranks here.
  std::vector<const int64_t*> Pointers(const std::vector<Shape>& shapes, int count) const {
    if (shapes.size() != static_cast<size_t>(count)) throw Error(DT_ERR_ARGUMENT, "wrong number of input shapes");
    std::vector<const int64_t*> pointers;
    for (int i = 0; i < count; ++i) {
      dt_tensor_info info;
      Check(dt_input_info(handle_, i, &info));
      if (shapes[i].size() != static_cast<size_t>(info.ndim)) {
        throw Error(DT_ERR_ARGUMENT, std::string("input '") + info.name + "' has " + std::to_string(info.ndim) +
                                         " dimensions, the shape given has " + std::to_string(shapes[i].size()));
      }
      pointers.push_back(shapes[i].data());
    }
    return pointers;
  }

  dt_model* handle_ = nullptr;
};

}  // namespace deploytool

#endif  // DEPLOYTOOL_HPP_
