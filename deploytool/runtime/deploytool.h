/* deploytool C API: load a deploytool package and run it, with no Python.
 *
 * Every function returning int returns DT_OK (0) on success or a DT_ERR_* code;
 * dt_last_error() then describes the failure (per thread).
 * A dt_model may be shared by threads: runs on one model are serialised by a lock.
 * For parallel throughput, load one model per thread. Models running at once in one process share
 * the CPU cores (see DT_SHARE_FAIR below).
 */
#ifndef DEPLOYTOOL_H_
#define DEPLOYTOOL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DT_OK 0
#define DT_ERR_ARGUMENT 1  /* bad argument: null pointer, index out of range, bad device */
#define DT_ERR_PACKAGE 2   /* not a package, or an unreadable or corrupted one */
#define DT_ERR_PLATFORM 3  /* this machine cannot run the package (CPU features, architecture) */
#define DT_ERR_RUN 4       /* the model failed while running */
#define DT_ERR_MISMATCH 5  /* the self-test's outputs differ from the reference outputs */
#define DT_ERR_DEVICE 6    /* the device is missing or unusable (no GPU, no NVIDIA driver) */

#define DT_MAX_NDIM 8

typedef struct dt_model dt_model;

typedef struct {
  const char* name;
  const char* dtype; /* "float32", "int64", ... */
  int ndim;
  int64_t shape[DT_MAX_NDIM];     /* -1 for a symbolic dimension (a dynamic batch, see below) */
  size_t nbytes;     /* size of the tensor's data in bytes; for a tensor with symbolic dimensions,
                        its size at max_shape (enough for any run), 0 if one is unbounded */
  int64_t max_shape[DT_MAX_NDIM]; /* shape, with each symbolic dimension at its upper bound
                                     (-1 if it has none) */
} dt_tensor_info;

/* The message of the last failed call on this thread ("" if none). */
const char* dt_last_error(void);

/* Load the package in folder `package_dir` onto `device`: "cpu", "cpu:0", or for a package
 * compiled for CUDA "cuda", "cuda:N". NULL or "" means the package's own device (cpu, cuda:0).
 * CPU kernels run on one thread per physical core this process may use: unless the environment
 * sets TVM_NUM_THREADS (or OMP_NUM_THREADS), the first dt_load sets TVM_NUM_THREADS to that
 * count (TVM's own default assumes two hyperthreads per core and used half of them on machines
 * with one thread per core). */
int dt_load(const char* package_dir, const char* device, dt_model** out);
void dt_free(dt_model* model);

/* Several models in one process share the CPU cores fairly by default: a run of a CPU model uses
 * max(1, min(threads, pool / busy)) threads, where pool is the thread count above
 * (TVM_NUM_THREADS or the physical cores), threads the model's own limit (dt_options.threads) and
 * busy the number of CPU models running, or done with a run less than 20 ms ago, when it starts. Two models busy at once on
 * 2 cores thus get a core each instead of taking turns for both; alone, a model gets them all.
 * The count spans the models loaded through one copy of this library: link one package's
 * libdeploytool.so and load every package through it. */
#define DT_SHARE_FAIR 0  /* the default: split the cores among the runs in flight */
#define DT_SHARE_NONE 1  /* always use `threads` threads, whatever else runs (pin threads yourself) */

/* Options of dt_load_ex. Zero it ({0} or memset) and set size to sizeof(dt_options): later
 * versions append fields, and dt_load_ex reads only the fields that `size` covers. */
typedef struct {
  size_t size;  /* sizeof(dt_options) */
  int threads;  /* most CPU threads a run of this model uses; 0: the pool's count (see dt_load).
                   Above the pool's count, the pool's count */
  int share;    /* DT_SHARE_FAIR or DT_SHARE_NONE */
} dt_options;

/* dt_load with options; options NULL is dt_load. DT_ERR_ARGUMENT for an unknown size, a negative
 * thread count or an unknown share policy. */
int dt_load_ex(const char* package_dir, const char* device, const dt_options* options, dt_model** out);

int dt_num_inputs(const dt_model* model);
int dt_num_outputs(const dt_model* model);
int dt_input_info(const dt_model* model, int index, dt_tensor_info* out);
int dt_output_info(const dt_model* model, int index, dt_tensor_info* out);

/* Run the model. inputs[i] points to the data of input i (row-major, dt_input_info's nbytes);
 * outputs[i] to a caller-owned buffer of dt_output_info's nbytes, which receives output i.
 * Buffers are host memory on every device: a GPU model copies them over and back.
 * To keep data on the GPU, see dt_run_dlpack in deploytool_dlpack.h. */
int dt_run(dt_model* model, const void* const* inputs, void* const* outputs);

/* Dynamic shapes. A package compiled with a symbolic dimension (--input x:N<=32x512) runs at any
 * size of N from 1 to its bound; dt_input_info reports -1 for N and max_shape holds the bound.
 * dt_run refuses such a package (DT_ERR_ARGUMENT): give the shapes of each run instead.
 * input_shapes[i] points to dt_input_info(i).ndim sizes. A symbol takes one size in all the
 * inputs that have it; a size above the bound, or a static dimension that differs, is
 * DT_ERR_ARGUMENT. dt_run_shaped also runs a static package (with its static shapes). */

/* The output shapes for these input shapes, without running: output_shapes[i] receives
 * dt_output_info(i).ndim sizes. Size the output buffers from them (product * element size). */
int dt_output_shapes(const dt_model* model, const int64_t* const* input_shapes,
                     int64_t* const* output_shapes);

/* dt_run at the given input shapes: inputs[i] holds that many elements (row-major), outputs[i]
 * is a caller-owned buffer of the size dt_output_shapes gives (or of nbytes, the size at the
 * bounds, which fits every run). */
int dt_run_shaped(dt_model* model, const int64_t* const* input_shapes, const void* const* inputs,
                  void* const* outputs);

/* Check the sha256 of model.so and the test vectors against manifest.json: DT_ERR_PACKAGE names a
 * corrupted or truncated file. Call it before dt_load on a package that was copied around. */
int dt_verify(const char* package_dir);

/* Run the package's own test vectors (inputs and reference outputs computed when it was compiled)
 * and compare under |out - ref| <= atol + rtol * |ref|. DT_OK if all pass, DT_ERR_MISMATCH if not.
 * If report is not NULL, a line per output (max abs error, PASSED/FAILED) is written to it. */
int dt_self_test(dt_model* model, char* report, size_t report_size);

/* Per-kernel profile (CPU packages): after dt_profile(model, 1), every run also times each kernel
 * the model calls; dt_profile(model, 0) stops timing and keeps what was measured (enabling again
 * starts afresh). dt_profile_report writes one line per kernel call of a run, in call order:
 * "<microseconds, median over the profiled runs> <runs timed> <kernel name>\n". A GPU package refuses
 * (DT_ERR_ARGUMENT): its kernels run asynchronously. */
int dt_profile(dt_model* model, int enable);
int dt_profile_report(dt_model* model, char* report, size_t report_size);

#ifdef __cplusplus
}
#endif

#endif /* DEPLOYTOOL_H_ */
