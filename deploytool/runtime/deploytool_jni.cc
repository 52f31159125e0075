// JNI bindings of ai.deploytool (java/deploytool.jar) over the C API in deploytool.h.
// Strings cross as UTF-8 byte arrays (not JNI's modified UTF-8); tensors as direct ByteBuffers,
// whose memory is handed to dt_run as it is, with no copy.
#include <jni.h>

#include <cstdint>
#include <string>
#include <vector>

#include "deploytool.h"

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

JNIEXPORT jlong JNICALL Java_ai_deploytool_NativeApi_load(JNIEnv* env, jclass, jbyteArray dir, jbyteArray device) {
  dt_model* model = nullptr;
  int code = dt_load(Bytes(env, dir).c_str(), Bytes(env, device).c_str(), &model);
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
