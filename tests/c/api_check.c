#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "load.h"

/* Runs input 0 from an aligned and from an unaligned buffer and prints whether the outputs
   differ, the names, and the code of an out-of-range query. */
int main(int argc, char** argv) {
  dt_tensor_info in, out;
  dt_model* model = load_or_exit(argv[1], &in, &out);
  char* aligned = aligned_alloc(64, (in.nbytes + 127) / 64 * 64);
  char* raw = malloc(in.nbytes + 64);
  char* unaligned = raw + (((uintptr_t)raw % 64) ? 0 : 4);
  float* x = (float*)aligned;
  for (size_t i = 0; i < in.nbytes / 4; ++i) x[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
  memcpy(unaligned, aligned, in.nbytes);
  float* y1 = malloc(out.nbytes);
  float* y2 = malloc(out.nbytes);
  const void* ins1[] = {aligned};
  const void* ins2[] = {unaligned};
  void* outs1[] = {y1};
  void* outs2[] = {y2};
  if (dt_run(model, ins1, outs1) || dt_run(model, ins2, outs2)) {
    fprintf(stderr, "%s\n", dt_last_error());
    return 1;
  }
  printf("%d %s %s %d\n", memcmp(y1, y2, out.nbytes), in.name, out.dtype, dt_input_info(model, 5, &in));
  printf("%s\n", dt_last_error());
  dt_free(model);
  return 0;
}
