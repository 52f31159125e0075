// JNI bindings of ai.deploytool (java/deploytool.jar) over the C API in deploytool.h.
// Strings cross as UTF-8 byte arrays (not JNI's modified UTF-8); tensors as direct ByteBuffers,
// whose memory is handed to dt_run as it is, with no copy.
//
// The JVM handles SIGSEGV itself (null checks, stack banging), but libtvm_ffi installs its own
// SIGSEGV handler (a backtrace, then exit) from a constructor when it is loaded: a later
// NullPointerException would then kill the JVM. So this library does not link libdeploytool
// (and with it libtvm_ffi): JNI_OnLoad saves the SIGSEGV and SIGBUS handlers, dlopen's
// libdeploytool.so from this library's folder, puts the JVM's handlers back and takes the C API
// from it with dlsym.
#include <dlfcn.h>
#include <jni.h>
#include <signal.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "deploytool.h"

namespace {

// The C API, resolved in JNI_OnLoad.
struct Api {
  decltype(&::dt_last_error) last_error;
  decltype(&::dt_load_ex) load_ex;
  decltype(&::dt_free) free;
  decltype(&::dt_num_inputs) num_inputs;
  decltype(&::dt_num_outputs) num_outputs;
  decltype(&::dt_input_info) input_info;
  decltype(&::dt_output_info) output_info;
  decltype(&::dt_run) run;
} g_api;

// libdeploytool.so beside this library, loaded with the JVM's signal handlers kept. "" or the error.
std::string LoadApi() {
  Dl_info self;
  if (dladdr(reinterpret_cast<void*>(&LoadApi), &self) == 0 || self.dli_fname == nullptr) {
    return "cannot find the folder of libdeploytool_jni.so";
  }
  std::string path = self.dli_fname;
  path = path.substr(0, path.rfind('/') + 1) + "libdeploytool.so";
  const int kept[] = {SIGSEGV, SIGBUS};
  struct sigaction saved[2];
  for (int i = 0; i < 2; ++i) sigaction(kept[i], nullptr, &saved[i]);
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  for (int i = 0; i < 2; ++i) sigaction(kept[i], &saved[i], nullptr);
  if (library == nullptr) return std::string("cannot load ") + path + ": " + dlerror();
  bool ok = true;
  auto resolve = [&](auto* slot, const char* name) {
    *slot = reinterpret_cast<std::remove_pointer_t<decltype(slot)>>(dlsym(library, name));
    ok = ok && *slot != nullptr;
  };
  resolve(&g_api.last_error, "dt_last_error");
  resolve(&g_api.load_ex, "dt_load_ex");
  resolve(&g_api.free, "dt_free");
  resolve(&g_api.num_inputs, "dt_num_inputs");
  resolve(&g_api.num_outputs, "dt_num_outputs");
  resolve(&g_api.input_info, "dt_input_info");
  resolve(&g_api.output_info, "dt_output_info");
  resolve(&g_api.run, "dt_run");
  return ok ? "" : path + " lacks a function of the C API (an older package?)";
}

}  // namespace

#define dt_last_error g_api.last_error
#define dt_load_ex g_api.load_ex
#define dt_free g_api.free
#define dt_num_inputs g_api.num_inputs
#define dt_num_outputs g_api.num_outputs
#define dt_input_info g_api.input_info
#define dt_output_info g_api.output_info
#define dt_run g_api.run

namespace {

jbyteArray Utf8(JNIEnv* env, const char* text) {
  jsize length = static_cast<jsize>(std::char_traits<char>::length(text));
  jbyteArray bytes = env->NewByteArray(length);
  if (bytes != nullptr) env->SetByteArrayRegion(bytes, 0, length, reinterpret_cast<const jbyte*>(text));
  return bytes;
}

// Throws ai.deploytool.DeploytoolException(code, message) in the calling Java thread.
void Throw(JNIEnv* env, int code, const char* message) {
  jclass cls = env->FindClass("ai/deploytool/DeploytoolException");
  if (cls == nullptr) return;  // NoClassDefFoundError is pending
  jmethodID make = env->GetStaticMethodID(cls, "fromNative", "(I[B)Lai/deploytool/DeploytoolException;");
  jbyteArray text = make ? Utf8(env, message) : nullptr;
  if (text == nullptr) return;
  jobject error = env->CallStaticObjectMethod(cls, make, static_cast<jint>(code), text);
  if (error != nullptr) env->Throw(static_cast<jthrowable>(error));
}

// A NUL-terminated copy of a byte[] that Java terminated (NativeApi.cString).
std::string Bytes(JNIEnv* env, jbyteArray array) {
  jsize length = env->GetArrayLength(array);
  std::string text(static_cast<size_t>(length), '\0');
  env->GetByteArrayRegion(array, 0, length, reinterpret_cast<jbyte*>(&text[0]));
  return std::string(text.c_str());
}

dt_model* Model(jlong handle) { return reinterpret_cast<dt_model*>(static_cast<intptr_t>(handle)); }

// The addresses of direct buffers, checked against the sizes the model needs.
bool Addresses(JNIEnv* env, dt_model* model, jobjectArray buffers, bool outputs, std::vector<void*>* out) {
  int count = outputs ? dt_num_outputs(model) : dt_num_inputs(model);
  if (buffers == nullptr || env->GetArrayLength(buffers) != count) {
    Throw(env, DT_ERR_ARGUMENT, outputs ? "wrong number of output buffers" : "wrong number of input buffers");
    return false;
  }
  for (int i = 0; i < count; ++i) {
    dt_tensor_info info;
    if ((outputs ? dt_output_info : dt_input_info)(model, i, &info) != DT_OK) {
      Throw(env, DT_ERR_ARGUMENT, dt_last_error());
      return false;
    }
    jobject buffer = env->GetObjectArrayElement(buffers, i);
    void* address = buffer ? env->GetDirectBufferAddress(buffer) : nullptr;
    jlong capacity = buffer ? env->GetDirectBufferCapacity(buffer) : -1;
    if (buffer) env->DeleteLocalRef(buffer);
    if (address == nullptr || capacity < static_cast<jlong>(info.nbytes)) {
      std::string message = std::string(outputs ? "output '" : "input '") + info.name +
                            "' needs a direct buffer of " + std::to_string(info.nbytes) + " bytes";
      Throw(env, DT_ERR_ARGUMENT, message.c_str());
      return false;
    }
    out->push_back(address);
  }
  return true;
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_ai_deploytool_NativeApi_load(JNIEnv* env, jclass, jbyteArray dir, jbyteArray device,
                                                          jint threads) {
  dt_model* model = nullptr;
  dt_options options{};
  options.size = sizeof(options);
  options.threads = threads;
  int code = dt_load_ex(Bytes(env, dir).c_str(), Bytes(env, device).c_str(), &options, &model);
  if (code != DT_OK) {
    Throw(env, code, dt_last_error());
    return 0;
  }
  for (int i = 0; i < dt_num_inputs(model); ++i) {  // the Java binding runs static shapes only
    dt_tensor_info info;
    dt_input_info(model, i, &info);
    for (int d = 0; d < info.ndim; ++d) {
      if (info.shape[d] >= 0) continue;
      std::string message = std::string("the package has a symbolic dimension (input '") + info.name +
                            "', a dynamic batch), which the Java binding does not run. Compile it with "
                            "static shapes for Java, or run it from C or C++ (dt_run_shaped)";
      dt_free(model);
      Throw(env, DT_ERR_ARGUMENT, message.c_str());
      return 0;
    }
  }
  return static_cast<jlong>(reinterpret_cast<intptr_t>(model));
}

JNIEXPORT void JNICALL Java_ai_deploytool_NativeApi_free(JNIEnv*, jclass, jlong handle) { dt_free(Model(handle)); }

JNIEXPORT jobjectArray JNICALL Java_ai_deploytool_NativeApi_infos(JNIEnv* env, jclass, jlong handle, jboolean outputs) {
  dt_model* model = Model(handle);
  jclass cls = env->FindClass("ai/deploytool/TensorInfo");
  if (cls == nullptr) return nullptr;
  jmethodID make = env->GetStaticMethodID(cls, "fromNative", "([B[B[JJ)Lai/deploytool/TensorInfo;");
  if (make == nullptr) return nullptr;
  int count = outputs ? dt_num_outputs(model) : dt_num_inputs(model);
  jobjectArray infos = env->NewObjectArray(count, cls, nullptr);
  for (int i = 0; infos != nullptr && i < count; ++i) {
    dt_tensor_info info;
    int code = (outputs ? dt_output_info : dt_input_info)(model, i, &info);
    if (code != DT_OK) {
      Throw(env, code, dt_last_error());
      return nullptr;
    }
    jbyteArray name = Utf8(env, info.name);
    jbyteArray dtype = Utf8(env, info.dtype);
    jlongArray shape = env->NewLongArray(info.ndim);
    if (name == nullptr || dtype == nullptr || shape == nullptr) return nullptr;
    std::vector<jlong> dims(info.shape, info.shape + info.ndim);
    env->SetLongArrayRegion(shape, 0, info.ndim, dims.data());
    jobject object = env->CallStaticObjectMethod(cls, make, name, dtype, shape, static_cast<jlong>(info.nbytes));
    if (object == nullptr) return nullptr;  // the Java exception is pending
    env->SetObjectArrayElement(infos, i, object);
    for (jobject ref : {static_cast<jobject>(name), static_cast<jobject>(dtype), static_cast<jobject>(shape), object}) {
      env->DeleteLocalRef(ref);
    }
  }
  return infos;
}

// Runs without holding any JVM lock: other Java threads keep running while this one waits for
// the model's lock inside dt_run.
JNIEXPORT void JNICALL Java_ai_deploytool_NativeApi_run(JNIEnv* env, jclass, jlong handle, jobjectArray inputs,
                                                        jobjectArray outputs) {
  dt_model* model = Model(handle);
  std::vector<void*> in, out;
  if (!Addresses(env, model, inputs, false, &in) || !Addresses(env, model, outputs, true, &out)) return;
  std::vector<const void*> const_in(in.begin(), in.end());
  int code = dt_run(model, const_in.data(), out.data());
  if (code != DT_OK) Throw(env, code, dt_last_error());
}

}  // extern "C"

// Loads the C API before any NativeApi method runs; a failure is an UnsatisfiedLinkError in System.load.
extern "C" JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM* vm, void*) {
  std::string error = LoadApi();
  if (error.empty()) return JNI_VERSION_1_8;
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), JNI_VERSION_1_8) == JNI_OK) {
    jclass cls = env->FindClass("java/lang/UnsatisfiedLinkError");
    if (cls != nullptr) env->ThrowNew(cls, error.c_str());
  }
  return JNI_ERR;
}

