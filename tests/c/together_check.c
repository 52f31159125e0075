#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "deploytool.h"

/* usage: together_check THREADS RUNS PACKAGE...
   Loads every package with dt_load_ex (THREADS CPU threads a run), then runs each package's
   self-test RUNS times in a thread of its own, all at once. Prints "<package> <passed>/<runs>"
   per package; exits 1 if any run failed or differed from the test vectors. */

typedef struct {
  const char* dir;
  dt_model* model;
  int runs, passed;
} job;

static void* run_self_tests(void* arg) {
  job* j = arg;
  for (int i = 0; i < j->runs; ++i) {
    if (dt_self_test(j->model, NULL, 0) == DT_OK) ++j->passed;
    else fprintf(stderr, "%s: %s\n", j->dir, dt_last_error());
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  int count = argc - 3;
  job* jobs = calloc((size_t)count, sizeof(job));
  pthread_t* threads = calloc((size_t)count, sizeof(pthread_t));
  dt_options options;
  memset(&options, 0, sizeof(options));
  options.size = sizeof(options);
  options.threads = atoi(argv[1]);
  for (int i = 0; i < count; ++i) {
    jobs[i].dir = argv[i + 3];
    jobs[i].runs = atoi(argv[2]);
    if (dt_load_ex(jobs[i].dir, NULL, &options, &jobs[i].model) != DT_OK) {
      fprintf(stderr, "%s\n", dt_last_error());
      return 1;
    }
  }
  for (int i = 0; i < count; ++i) pthread_create(&threads[i], NULL, run_self_tests, &jobs[i]);
  int failed = 0;
  for (int i = 0; i < count; ++i) {
    pthread_join(threads[i], NULL);
    printf("%s %d/%d\n", jobs[i].dir, jobs[i].passed, jobs[i].runs);
    failed |= jobs[i].passed != jobs[i].runs;
    dt_free(jobs[i].model);
  }
  return failed;
}
