#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "deploytool_dlpack.h"
#include "load.h"

/* For a package whose input 0 has a symbolic batch (dimension 0): prints the reported info, what
   dt_run says, the output shape at batch argv[2], the outputs of an aligned and an unaligned
   dt_run_shaped run at that batch (to stdout, one value a line), whether dt_run_dlpack agrees,
   and what a batch of argv[3] gives. Input values: element i is ((i * 37) % 11) / 11 - 0.5. */
int main(int argc, char** argv) {
  if (argc != 4) return 2;
  dt_tensor_info in, out;
  dt_model* model = load_or_exit(argv[1], &in, &out);
  fprintf(stderr, "info %lld %lld %zu %lld %zu\n", (long long)in.shape[0], (long long)in.max_shape[0],
          in.nbytes, (long long)out.shape[0], out.nbytes);
  const void* none[] = {NULL};
  void* none_out[] = {NULL};
  int code = dt_run(model, none, none_out);
  fprintf(stderr, "dt_run %d %s\n", code, dt_last_error());

  int64_t shape[DT_MAX_NDIM], out_shape[DT_MAX_NDIM];
  for (int d = 0; d < in.ndim; ++d) shape[d] = in.shape[d];
  shape[0] = atoll(argv[2]);
  const int64_t* shapes[] = {shape};
  int64_t* out_shapes[] = {out_shape};
  if (dt_output_shapes(model, shapes, out_shapes) != DT_OK) {
    fprintf(stderr, "%s\n", dt_last_error());
    return 1;
  }
  size_t count = 1, out_count = 1;
  for (int d = 0; d < in.ndim; ++d) count *= (size_t)shape[d];
  fprintf(stderr, "output shape");
  for (int d = 0; d < out.ndim; ++d) {
    out_count *= (size_t)out_shape[d];
    fprintf(stderr, " %lld", (long long)out_shape[d]);
  }
  fprintf(stderr, "\n");
  float* x = aligned_alloc(64, (count * 4 + 63) / 64 * 64);
  char* raw = malloc(count * 4 + 64);
  char* unaligned = raw + (((uintptr_t)raw % 64) ? 0 : 4);
  for (size_t i = 0; i < count; ++i) x[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
  memcpy(unaligned, x, count * 4);
  float* y1 = malloc(out_count * 4);
  float* y2 = malloc(out_count * 4);
  const void* ins1[] = {x};
  const void* ins2[] = {unaligned};
  void* outs1[] = {y1};
  void* outs2[] = {y2};
  if (dt_run_shaped(model, shapes, ins1, outs1) || dt_run_shaped(model, shapes, ins2, outs2)) {
    fprintf(stderr, "%s\n", dt_last_error());
    return 1;
  }
  fprintf(stderr, "aligned and unaligned %s\n", memcmp(y1, y2, out_count * 4) ? "differ" : "agree");
  for (size_t i = 0; i < out_count; ++i) printf("%.9g\n", y1[i]);
  DLTensor tensor = {x, {kDLCPU, 0}, in.ndim, {kDLFloat, 32, 1}, shape, NULL, 0};
  const DLTensor* dl_inputs[] = {&tensor};
  DLManagedTensorVersioned* result[] = {NULL};
  if (dt_run_dlpack(model, dl_inputs, result)) {
    fprintf(stderr, "%s\n", dt_last_error());
    return 1;
  }
  const DLTensor* r = &result[0]->dl_tensor;
  fprintf(stderr, "dlpack %lld %s\n", (long long)r->shape[0],
          memcmp((char*)r->data + r->byte_offset, y1, out_count * 4) ? "differs" : "agrees");
  result[0]->deleter(result[0]);
  shape[0] = atoll(argv[3]);
  code = dt_run_shaped(model, shapes, ins1, outs1);
  fprintf(stderr, "too big %d %s\n", code, dt_last_error());
  dt_free(model);
  return 0;
}
