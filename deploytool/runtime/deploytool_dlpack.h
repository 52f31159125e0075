/* deploytool C API, DLPack part: run a model on tensors that stay on its device.
 *
 * For hosts that already hold their data in GPU memory (PyTorch, CuPy, JAX, TensorRT pipelines):
 * no copy to or from the host. Tensors are DLPack's (https://dmlc.github.io/dlpack/latest/),
 * whose header ships beside this one in include/dlpack/dlpack.h.
 */
#ifndef DEPLOYTOOL_DLPACK_H_
#define DEPLOYTOOL_DLPACK_H_

#include "deploytool.h"
#include "dlpack/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The device the model was loaded on ({kDLCUDA, 0} for "cuda:0", {kDLCPU, 0} for "cpu"). */
int dt_device(const dt_model* model, DLDevice* out);

/* Run the model on device tensors.
 * inputs[i]: a row-major contiguous tensor (strides NULL or compact) on dt_device's device, with
 *   the dtype and shape dt_input_info gives (a symbolic dimension, -1 there, takes any size up to
 *   its bound); read during the call only, the caller keeps it.
 *   Work that produces it on another CUDA stream must be finished (synchronised) before the call.
 * outputs[i]: receives a new tensor on the model's device, owned by the caller, who releases it
 *   with outputs[i]->deleter(outputs[i]). The call returns when the outputs are computed.
 * On failure no output is set. */
int dt_run_dlpack(dt_model* model, const DLTensor* const* inputs,
                  DLManagedTensorVersioned** outputs);

#ifdef __cplusplus
}
#endif

#endif /* DEPLOYTOOL_DLPACK_H_ */
