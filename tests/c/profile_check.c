#include <stdio.h>
#include <stdlib.h>
#include "load.h"

/* Profiles 3 runs, stops, runs 5 more, prints the report; then a fresh profile's empty report,
   and the code of a report into a buffer too small. */
int main(int argc, char** argv) {
  dt_tensor_info in, out;
  dt_model* model = load_or_exit(argv[1], &in, &out);
  float* x = aligned_alloc(64, (in.nbytes + 63) / 64 * 64);
  for (size_t i = 0; i < in.nbytes / 4; ++i) x[i] = (float)(i % 7) * 0.1f;
  float* y = malloc(out.nbytes);
  const void* ins[] = {x};
  void* outs[] = {y};
  char report[1 << 16];
  int failed = dt_profile(model, 1);
  for (int i = 0; i < 3; ++i) failed |= dt_run(model, ins, outs);
  failed |= dt_profile(model, 0);
  for (int i = 0; i < 5; ++i) failed |= dt_run(model, ins, outs);
  failed |= dt_profile_report(model, report, sizeof(report));
  if (failed) {
    fprintf(stderr, "%s\n", dt_last_error());
    return 1;
  }
  printf("%s---\n", report);
  dt_profile(model, 1);
  dt_profile_report(model, report, sizeof(report));
  printf("[%s] %d\n", report, dt_profile_report(model, report, 0));
  dt_free(model);
  return 0;
}
