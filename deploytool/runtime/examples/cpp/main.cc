// Load a deploytool package, run it once and print its outputs. No Python involved.
// Usage: ./example PACKAGE_DIR [INPUT.npy ...]   (inputs in the model's order; default: all 0.5)
// A package with a symbolic dimension (dynamic batch) runs at each file's shape, or at size 1.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "deploytool.hpp"
#include "npy.hpp"

static size_t Count(const deploytool::Shape& shape) {
  size_t count = 1;
  for (int64_t extent : shape) count *= static_cast<size_t>(extent);
  return count;
}

static size_t ItemSize(const std::string& dtype) {
  return static_cast<size_t>(npy::DescrOf(dtype).back() - '0');  // "<f4" -> 4
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PACKAGE_DIR [INPUT.npy ...]\n", argv[0]);
    return 2;
  }
  try {
    deploytool::Model model(argv[1]);
    std::vector<std::vector<char>> inputs, outputs;
    std::vector<const void*> in;
    std::vector<void*> out;
    std::vector<deploytool::Shape> shapes;  // each run's input shapes (a dynamic package's vary)
    bool dynamic = false;
    auto infos = model.inputs();
    for (size_t i = 0; i < infos.size(); ++i) {
      deploytool::Shape shape = infos[i].shape;
      for (int64_t& extent : shape) extent = extent < 0 ? 1 : extent;  // a symbolic size: 1
      size_t nbytes = Count(shape) * ItemSize(infos[i].dtype);
      dynamic = dynamic || infos[i].dynamic();
      if (static_cast<int>(i) + 2 < argc) {
        npy::Array array = npy::Load(argv[i + 2]);
        if (infos[i].dynamic()) {
          nbytes = array.data.size();
          shape = array.shape;
        }
        inputs.push_back(array.data);
      } else if (infos[i].dtype == "float32") {
        std::vector<float> halves(nbytes / sizeof(float), 0.5f);
        inputs.emplace_back(reinterpret_cast<char*>(halves.data()),
                            reinterpret_cast<char*>(halves.data()) + nbytes);
      } else {
        inputs.emplace_back(nbytes, 0);
      }
      if (inputs.back().size() != nbytes) {
        std::fprintf(stderr, "input %s: expected %zu bytes\n", infos[i].name.c_str(), nbytes);
        return 1;
      }
      shapes.push_back(shape);
      in.push_back(inputs.back().data());
    }
    auto output_infos = model.outputs();
    auto output_shapes = model.output_shapes(shapes);
    for (size_t i = 0; i < output_infos.size(); ++i) {
      output_infos[i].nbytes = Count(output_shapes[i]) * ItemSize(output_infos[i].dtype);
      outputs.emplace_back(output_infos[i].nbytes);
      out.push_back(outputs.back().data());
    }
    if (dynamic) {
      model.run(shapes, in, out);
    } else {
      model.run(in, out);
    }
    for (size_t i = 0; i < output_infos.size(); ++i) {
      std::printf("%s:", output_infos[i].name.c_str());
      if (output_infos[i].dtype == "float32") {
        const float* values = reinterpret_cast<const float*>(outputs[i].data());
        size_t count = output_infos[i].nbytes / sizeof(float);
        for (size_t k = 0; k < count && k < 16; ++k) std::printf(" %.7g", values[k]);
        if (count > 16) std::printf(" ... (%zu values)", count);
      } else {
        std::printf(" (%zu bytes of %s)", output_infos[i].nbytes, output_infos[i].dtype.c_str());
      }
      std::printf("\n");
    }
  } catch (const deploytool::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
