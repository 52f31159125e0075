// Load a deploytool package, run it once and print its outputs. No Python involved.
// Usage: ./example PACKAGE_DIR [INPUT.npy ...]   (inputs in the model's order; default: all 0.5)
#include <cstdio>
#include <cstring>
#include <vector>

#include "deploytool.hpp"
#include "npy.hpp"

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
    auto infos = model.inputs();
    for (size_t i = 0; i < infos.size(); ++i) {
      if (static_cast<int>(i) + 2 < argc) {
        inputs.push_back(npy::Load(argv[i + 2]).data);
      } else if (infos[i].dtype == "float32") {
        std::vector<float> halves(infos[i].nbytes / sizeof(float), 0.5f);
        inputs.emplace_back(reinterpret_cast<char*>(halves.data()),
                            reinterpret_cast<char*>(halves.data()) + infos[i].nbytes);
      } else {
        inputs.emplace_back(infos[i].nbytes, 0);
      }
      if (inputs.back().size() != infos[i].nbytes) {
        std::fprintf(stderr, "input %s: expected %zu bytes\n", infos[i].name.c_str(), infos[i].nbytes);
        return 1;
      }
      in.push_back(inputs.back().data());
    }
    for (const auto& info : model.outputs()) {
      outputs.emplace_back(info.nbytes);
      out.push_back(outputs.back().data());
    }
    model.run(in, out);
    auto output_infos = model.outputs();
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
