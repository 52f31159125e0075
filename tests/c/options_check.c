#include <stdio.h>
#include <string.h>
#include "deploytool.h"

/* Loads PACKAGE with bad dt_options and prints each code and message, then a good load's code. */
static void try_load(const char* dir, const dt_options* options) {
  dt_model* model = NULL;
  int code = dt_load_ex(dir, NULL, options, &model);
  printf("%d %s\n", code, code == DT_OK ? "ok" : dt_last_error());
  dt_free(model);
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  dt_options options;
  memset(&options, 0, sizeof(options));
  try_load(argv[1], &options); /* size 0 */
  options.size = sizeof(options);
  options.threads = -1;
  try_load(argv[1], &options);
  options.threads = 1;
  options.share = 7;
  try_load(argv[1], &options);
  options.share = DT_SHARE_NONE;
  try_load(argv[1], &options);
  try_load(argv[1], NULL);
  return 0;
}
