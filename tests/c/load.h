/* Shared by the C test programs: load the package at `dir` on its own device, or exit 1 saying
   why; fills the info of input 0 and output 0. */
#include <stdio.h>
#include <stdlib.h>
#include "deploytool.h"

static dt_model* load_or_exit(const char* dir, dt_tensor_info* in, dt_tensor_info* out) {
  dt_model* model;
  if (dt_load(dir, NULL, &model) != DT_OK) {
    fprintf(stderr, "%s\n", dt_last_error());
    exit(1);
  }
  dt_input_info(model, 0, in);
  dt_output_info(model, 0, out);
  return model;
}
