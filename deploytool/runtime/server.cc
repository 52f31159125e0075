// deploytool-serve: serve a package over HTTP/JSON with the KServe v2 (Open Inference) protocol.
//
// HTTP is Boost.Beast over Boost.Asio (header-only): I/O threads read and write connections,
// inference requests go to a bounded queue served by worker threads, each with its own dt_model.
// JSON is TVM FFI's parser (libtvm_ffi.so, already in the package); responses are written here.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <tvm/ffi/extra/json.h>

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "deploytool.hpp"

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
namespace ffi = tvm::ffi;

namespace {

const char* kUsage =
    "usage: deploytool-serve [PACKAGE] [--port N] [--host ADDR] [--name NAME] [--device cpu|cuda:N]\n"
    "                        [--workers N] [--threads N] [--max-queue N] [--max-body-bytes N]\n"
    "                        [--io-threads N] [--drain-seconds S] [--delay-ms MS]\n"
    "Serves the package over HTTP/JSON with the KServe v2 (Open Inference) protocol:\n"
    "  GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME, /v2/models/NAME/ready\n"
    "  POST /v2/models/NAME/infer\n"
    "PACKAGE defaults to the package this program belongs to; NAME to the manifest's model name.\n"
    "--host           address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)\n"
    "--port           TCP port (default 8000; 0 picks a free one, printed at start)\n"
    "--workers        inference threads, each with its own copy of the model (default 1)\n"
    "--threads        TVM threads per run (TVM_NUM_THREADS; default the cores / workers)\n"
    "--max-queue      inference requests that may wait for a worker (default 64); more get 503\n"
    "--max-body-bytes largest request body (default 67108864); larger ones get 413\n"
    "--io-threads     threads reading and writing connections (default 2)\n"
    "--drain-seconds  on SIGTERM or SIGINT, how long to let in-flight requests finish (default 30)\n"
    "--delay-ms       hold each inference this much longer (for testing clients and the queue)\n";

// ---- tensors and JSON values -------------------------------------------------------------

struct DataType {
  const char* dtype;   // deploytool's name ("float32")
  const char* kserve;  // the protocol's ("FP32")
  size_t item;         // bytes per element
  char kind;           // f float, h float16, B bfloat16, i signed, u unsigned, b bool
};

const DataType kDataTypes[] = {
    {"float32", "FP32", 4, 'f'}, {"float64", "FP64", 8, 'f'}, {"float16", "FP16", 2, 'h'},
    {"bfloat16", "BF16", 2, 'B'}, {"int8", "INT8", 1, 'i'},   {"int16", "INT16", 2, 'i'},
    {"int32", "INT32", 4, 'i'},  {"int64", "INT64", 8, 'i'},  {"uint8", "UINT8", 1, 'u'},
    {"uint16", "UINT16", 2, 'u'}, {"uint32", "UINT32", 4, 'u'}, {"uint64", "UINT64", 8, 'u'},
    {"bool", "BOOL", 1, 'b'},
};

const DataType* FindDataType(const std::string& dtype) {
  for (const DataType& type : kDataTypes) {
    if (dtype == type.dtype) return &type;
  }
  return nullptr;
}

uint16_t FloatToHalf(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00);
  if (e <= 0) {  // a subnormal half, or zero
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift, rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13), rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;  // to nearest even; may carry to inf
  return static_cast<uint16_t>(half);
}

float HalfToFloat(uint16_t half) {
  uint32_t sign = (half & 0x8000u) << 16, exp = (half >> 10) & 0x1f, mant = half & 0x3ff;
  if (exp == 0) {
    float value = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -value : value;
  }
  uint32_t x = exp == 31 ? (sign | 0x7f800000 | (mant << 13)) : (sign | ((exp + 112) << 23) | (mant << 13));
  float value;
  std::memcpy(&value, &x, 4);
  return value;
}

uint16_t FloatToBfloat16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  if (std::isnan(value)) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

float Bfloat16ToFloat(uint16_t bits) {
  uint32_t x = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &x, 4);
  return value;
}

// A client's mistake (4xx) or the server's (5xx), answered as {"error": message}.
struct HttpError : std::runtime_error {
  unsigned status;
  HttpError(unsigned code, const std::string& message) : std::runtime_error(message), status(code) {}
};

HttpError BadRequest(const std::string& message) { return HttpError(400, message); }

std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string ErrorBody(const std::string& message) { return "{\"error\":" + Quote(message) + "}"; }

std::string ShapeJson(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

// Shortest text that reads back to the same value; NaN and infinities as JavaScript writes them
// (Python's json and TVM's parser read them back).
template <typename Float>
void AppendFloat(std::string& out, Float value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "Infinity" : "-Infinity";
  } else {
    char text[64];
    auto result = std::to_chars(text, text + sizeof(text), value);
    out.append(text, result.ptr);
  }
}

template <typename T>
T Load(const char* data, size_t i) {
  T value;
  std::memcpy(&value, data + i * sizeof(T), sizeof(T));
  return value;
}

// Appends the `count` elements of `data` as a flat JSON array.
void AppendData(std::string& out, const DataType& type, const char* data, size_t count) {
  out += '[';
  for (size_t i = 0; i < count; ++i) {
    if (i) out += ',';
    switch (type.kind) {
      case 'f':
        if (type.item == 4) AppendFloat(out, Load<float>(data, i));
        else AppendFloat(out, Load<double>(data, i));
        break;
      case 'h': AppendFloat(out, HalfToFloat(Load<uint16_t>(data, i))); break;
      case 'B': AppendFloat(out, Bfloat16ToFloat(Load<uint16_t>(data, i))); break;
      case 'b': out += data[i] ? "true" : "false"; break;
      case 'i': {
        int64_t value = type.item == 1 ? Load<int8_t>(data, i) : type.item == 2 ? Load<int16_t>(data, i)
                        : type.item == 4 ? Load<int32_t>(data, i) : Load<int64_t>(data, i);
        out += std::to_string(value);
        break;
      }
      default: {
        uint64_t value = type.item == 1 ? Load<uint8_t>(data, i) : type.item == 2 ? Load<uint16_t>(data, i)
                         : type.item == 4 ? Load<uint32_t>(data, i) : Load<uint64_t>(data, i);
        out += std::to_string(value);
      }
    }
  }
  out += ']';
}

std::string TypeName(const ffi::Any& value) {
  switch (value.type_index()) {
    case ffi::TypeIndex::kTVMFFINone: return "null";
    case ffi::TypeIndex::kTVMFFIBool: return "a boolean";
    case ffi::TypeIndex::kTVMFFIInt: return "an integer";
    case ffi::TypeIndex::kTVMFFIFloat: return "a number";
    case ffi::TypeIndex::kTVMFFIArray: return "an array";
    case ffi::TypeIndex::kTVMFFIMap: return "an object";
    default: return "a string";
  }
}

// Stores a JSON value as element `index` of a tensor of `type` at `out`; throws a 400 on a value
// of the wrong kind or out of the type's range.
void StoreValue(const ffi::Any& value, const DataType& type, char* out, size_t index, const std::string& what) {
  int32_t kind = value.type_index();
  auto wrong = [&](const std::string& why) {
    return BadRequest(what + ": the value at flat index " + std::to_string(index) + " is " + why + ", but the datatype is " +
                      type.kserve);
  };
  char* at = out + index * type.item;
  if (type.kind == 'f' || type.kind == 'h' || type.kind == 'B') {
    double number;
    if (kind == ffi::TypeIndex::kTVMFFIFloat) {
      number = value.cast<double>();
    } else if (kind == ffi::TypeIndex::kTVMFFIInt) {
      number = static_cast<double>(value.cast<int64_t>());
    } else {
      throw wrong(TypeName(value));
    }
    if (type.kind == 'f' && type.item == 8) {
      std::memcpy(at, &number, 8);
    } else if (type.kind == 'f') {
      float single = static_cast<float>(number);
      std::memcpy(at, &single, 4);
    } else {
      uint16_t bits = type.kind == 'h' ? FloatToHalf(static_cast<float>(number)) : FloatToBfloat16(static_cast<float>(number));
      std::memcpy(at, &bits, 2);
    }
    return;
  }
  int64_t integer;
  if (kind == ffi::TypeIndex::kTVMFFIInt) {
    integer = value.cast<int64_t>();
  } else if (kind == ffi::TypeIndex::kTVMFFIBool && type.kind == 'b') {
    integer = value.cast<bool>() ? 1 : 0;
  } else if (kind == ffi::TypeIndex::kTVMFFIFloat) {
    double number = value.cast<double>();
    if (!(std::floor(number) == number && std::fabs(number) < 9.2e18)) throw wrong(std::to_string(number));
    integer = static_cast<int64_t>(number);
  } else {
    throw wrong(TypeName(value));
  }
  if (type.kind == 'b') {
    if (integer != 0 && integer != 1) throw wrong(std::to_string(integer));
    *at = static_cast<char>(integer);
    return;
  }
  if (type.item < 8) {
    int64_t low = type.kind == 'u' ? 0 : -(int64_t{1} << (type.item * 8 - 1));
    int64_t high = type.kind == 'u' ? (int64_t{1} << (type.item * 8)) - 1 : (int64_t{1} << (type.item * 8 - 1)) - 1;
    if (integer < low || integer > high) throw wrong(std::to_string(integer) + " (out of range)");
  } else if (type.kind == 'u' && integer < 0) {
    throw wrong(std::to_string(integer) + " (out of range)");
  }
  std::memcpy(at, &integer, type.item);  // little-endian: the low bytes hold the value
}

// Writes the values of a flat or nested JSON array in row-major order; returns how many it saw
// (writing only the first `capacity`).
size_t Flatten(const ffi::Any& data, const DataType& type, char* out, size_t capacity, size_t index,
               const std::string& what) {
  if (data.type_index() == ffi::TypeIndex::kTVMFFIArray) {
    for (const ffi::Any& item : data.cast<ffi::json::Array>()) index = Flatten(item, type, out, capacity, index, what);
    return index;
  }
  if (index < capacity) StoreValue(data, type, out, index, what);
  return index + 1;
}

// The deepest nesting of arrays and objects in a JSON text (the parser recurses on them).
size_t NestingDepth(const std::string& text, size_t end) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < end; ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

std::optional<ffi::Any> Get(const ffi::json::Object& object, const char* key) {
  auto value = object.Get(ffi::String(key));
  if (!value.has_value()) return std::nullopt;
  return *value;
}

std::string GetString(const ffi::json::Object& object, const char* key, const std::string& what, bool required = true) {
  auto value = Get(object, key);
  if (!value.has_value()) {
    if (required) throw BadRequest(what + " has no \"" + key + "\"");
    return "";
  }
  auto text = value->try_cast<ffi::String>();
  if (!text.has_value()) throw BadRequest(what + ": \"" + key + "\" must be a string, not " + TypeName(*value));
  return std::string(*text);
}

ffi::json::Object AsObject(const ffi::Any& value, const std::string& what) {
  auto object = value.try_cast<ffi::json::Object>();
  if (!object.has_value()) throw BadRequest(what + " must be a JSON object, not " + TypeName(value));
  return *object;
}

bool Flag(const std::optional<ffi::Any>& parameters, const char* key) {
  if (!parameters.has_value()) return false;
  auto object = parameters->try_cast<ffi::json::Object>();
  if (!object.has_value()) return false;
  auto value = Get(*object, key);
  return value.has_value() && value->try_cast<bool>().value_or(false);
}

std::optional<int64_t> SizeParameter(const std::optional<ffi::Any>& parameters, const char* key) {
  if (!parameters.has_value()) return std::nullopt;
  auto object = parameters->try_cast<ffi::json::Object>();
  if (!object.has_value()) return std::nullopt;
  auto value = Get(*object, key);
  if (!value.has_value()) return std::nullopt;
  if (value->type_index() != ffi::TypeIndex::kTVMFFIInt || value->cast<int64_t>() < 0) {
    throw BadRequest(std::string("\"") + key + "\" must be a non-negative integer");
  }
  return value->cast<int64_t>();
}

// ---- the model ---------------------------------------------------------------------------

struct Tensor {
  std::string name;
  const DataType* type;
  std::vector<int64_t> shape;  // -1 for a symbolic dimension
};

struct Options {
  std::string package, device, name, host = "127.0.0.1";
  int port = 8000;
  long workers = 1, max_queue = 64, io_threads = 2, threads = 0, delay_ms = 0;
  size_t max_body = 64ull << 20;
  double drain_seconds = 30;
};

// 64-byte aligned memory: the C API hands it to the model without a copy.
struct Buffer {
  char* data = nullptr;
  size_t bytes = 0;
  explicit Buffer(size_t size) : data(static_cast<char*>(std::aligned_alloc(64, std::max<size_t>(64, (size + 63) / 64 * 64)))),
                                 bytes(size) {
    if (data == nullptr) throw HttpError(507, "cannot allocate " + std::to_string(size) + " bytes");
  }
  Buffer(Buffer&& other) noexcept : data(other.data), bytes(other.bytes) { other.data = nullptr; }
  Buffer(const Buffer&) = delete;
  ~Buffer() { std::free(data); }
};

struct Reply {
  unsigned status = 200;
  std::string body;
  size_t json_length = std::string::npos;  // binary extension: the JSON header's length
};

Reply ErrorReply(unsigned status, const std::string& message) { return {status, ErrorBody(message)}; }

class Service {
 public:
  Service(Options options, std::vector<Tensor> inputs, std::vector<Tensor> outputs)
      : options_(std::move(options)), inputs_(std::move(inputs)), outputs_(std::move(outputs)) {}

  const std::string& name() const { return options_.name; }

  std::string Metadata() const {
    auto tensors = [](const std::vector<Tensor>& list) {
      std::string out = "[";
      for (size_t i = 0; i < list.size(); ++i) {
        out += std::string(i ? "," : "") + "{\"name\":" + Quote(list[i].name) + ",\"datatype\":\"" + list[i].type->kserve +
               "\",\"shape\":" + ShapeJson(list[i].shape) + "}";
      }
      return out + "]";
    };
    return "{\"name\":" + Quote(options_.name) + ",\"versions\":[\"1\"],\"platform\":\"deploytool\",\"inputs\":" +
           tensors(inputs_) + ",\"outputs\":" + tensors(outputs_) + "}";
  }

  // One inference request, on a worker thread with its own model.
  Reply Infer(dt_model* model, const std::string& body, size_t json_length) const {
    if (json_length != std::string::npos && json_length > body.size()) {
      throw BadRequest("Inference-Header-Content-Length is " + std::to_string(json_length) + " but the body has " +
                       std::to_string(body.size()) + " bytes");
    }
    size_t json_end = json_length == std::string::npos ? body.size() : json_length;
    if (NestingDepth(body, json_end) > 64) throw BadRequest("the request's JSON is nested more than 64 levels deep");
    ffi::String parse_error;
    ffi::Any parsed = ffi::json::Parse(ffi::String(body.data(), json_end), &parse_error);
    if (!parse_error.empty()) throw BadRequest("the request body is not valid JSON: " + std::string(parse_error));
    ffi::json::Object request = AsObject(parsed, "the request");
    std::optional<ffi::Any> id = Get(request, "id");
    bool binary_outputs = Flag(Get(request, "parameters"), "binary_data_output");
    auto listed = Get(request, "inputs");
    if (!listed.has_value()) throw BadRequest("the request has no \"inputs\"");
    auto items = listed->try_cast<ffi::json::Array>();
    if (!items.has_value()) throw BadRequest("\"inputs\" must be an array, not " + TypeName(*listed));

    std::vector<std::optional<Buffer>> buffers(inputs_.size());
    std::vector<std::vector<int64_t>> shapes(inputs_.size());
    size_t binary_at = json_end;
    for (const ffi::Any& item : *items) {
      ffi::json::Object input = AsObject(item, "each entry of \"inputs\"");
      std::string name = GetString(input, "name", "an entry of \"inputs\"");
      std::string what = "input '" + name + "'";
      size_t index = 0;
      while (index < inputs_.size() && inputs_[index].name != name) ++index;
      if (index == inputs_.size()) throw BadRequest("the model has no input named '" + name + "' (its inputs: " + Names(inputs_) + ")");
      if (buffers[index].has_value()) throw BadRequest(what + " is given twice");
      const Tensor& spec = inputs_[index];
      std::string datatype = GetString(input, "datatype", what);
      if (datatype != spec.type->kserve) {
        throw BadRequest(what + " has datatype " + datatype + " but the model takes " + spec.type->kserve);
      }
      shapes[index] = ParseShape(input, spec, what);
      size_t count = 1;
      for (int64_t extent : shapes[index]) {
        if (extent != 0 && count > (size_t{1} << 40) / static_cast<size_t>(extent)) throw BadRequest(what + ": the shape is too large");
        count *= static_cast<size_t>(extent);
      }
      // Sizes are checked against the request before allocating: memory follows the body's size.
      size_t bytes = count * spec.type->item;
      if (auto size = SizeParameter(Get(input, "parameters"), "binary_data_size")) {
        if (static_cast<size_t>(*size) != bytes) {
          throw BadRequest(what + ": binary_data_size is " + std::to_string(*size) + " but shape " + ShapeJson(shapes[index]) +
                           " of " + spec.type->kserve + " takes " + std::to_string(bytes) + " bytes");
        }
        if (json_length == std::string::npos || body.size() - binary_at < bytes) {
          throw BadRequest(what + ": the body has no " + std::to_string(bytes) +
                           " bytes of binary data for it (binary data needs the Inference-Header-Content-Length header)");
        }
        Buffer& buffer = buffers[index].emplace(bytes);
        std::memcpy(buffer.data, body.data() + binary_at, bytes);
        binary_at += bytes;
      } else {
        auto data = Get(input, "data");
        if (!data.has_value()) throw BadRequest(what + " has no \"data\"");
        if (data->type_index() != ffi::TypeIndex::kTVMFFIArray) throw BadRequest(what + ": \"data\" must be an array");
        size_t seen = Flatten(*data, *spec.type, nullptr, 0, 0, what);  // counts only
        if (seen != count) {
          throw BadRequest(what + " has " + std::to_string(seen) + " values but its shape " + ShapeJson(shapes[index]) +
                           " holds " + std::to_string(count));
        }
        Flatten(*data, *spec.type, buffers[index].emplace(bytes).data, count, 0, what);
      }
    }
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (!buffers[i].has_value()) {
        throw BadRequest("the request lacks input '" + inputs_[i].name + "' (the model takes " + Names(inputs_) + ")");
      }
    }
    if (binary_at != body.size() && json_length != std::string::npos) {
      throw BadRequest("the body has " + std::to_string(body.size() - binary_at) +
                       " bytes of binary data beyond the inputs' binary_data_size");
    }

    // Which outputs, and which of them as binary data.
    std::vector<int> wanted;  // 0 not wanted, 1 JSON, 2 binary
    if (auto requested = Get(request, "outputs")) {
      auto list = requested->try_cast<ffi::json::Array>();
      if (!list.has_value()) throw BadRequest("\"outputs\" must be an array, not " + TypeName(*requested));
      wanted.assign(outputs_.size(), 0);
      for (const ffi::Any& item : *list) {
        ffi::json::Object output = AsObject(item, "each entry of \"outputs\"");
        std::string name = GetString(output, "name", "an entry of \"outputs\"");
        size_t index = 0;
        while (index < outputs_.size() && outputs_[index].name != name) ++index;
        if (index == outputs_.size()) {
          throw BadRequest("the model has no output named '" + name + "' (its outputs: " + Names(outputs_) + ")");
        }
        auto parameters = Get(output, "parameters");
        bool binary = binary_outputs;
        if (parameters.has_value()) {
          auto object = parameters->try_cast<ffi::json::Object>();
          if (object.has_value() && Get(*object, "binary_data").has_value()) binary = Flag(parameters, "binary_data");
        }
        wanted[index] = binary ? 2 : 1;
      }
    } else {
      wanted.assign(outputs_.size(), binary_outputs ? 2 : 1);
    }

    // Shapes (which checks the inputs' shapes against the model), then the run.
    std::vector<const int64_t*> in_shapes;
    std::vector<const void*> in;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      in_shapes.push_back(shapes[i].data());
      in.push_back(buffers[i]->data);
    }
    std::vector<std::vector<int64_t>> out_shapes;
    std::vector<int64_t*> out_shape_ptrs;
    for (const Tensor& spec : outputs_) out_shapes.emplace_back(spec.shape.size());
    for (auto& shape : out_shapes) out_shape_ptrs.push_back(shape.data());
    if (dt_output_shapes(model, in_shapes.data(), out_shape_ptrs.data()) != DT_OK) {
      std::string message = dt_last_error();
      const std::string prefix = "dt_output_shapes: ";
      if (message.rfind(prefix, 0) == 0) message = message.substr(prefix.size());
      throw BadRequest(message);
    }
    std::vector<Buffer> results;
    std::vector<void*> out;
    for (size_t o = 0; o < outputs_.size(); ++o) {
      size_t count = 1;
      for (int64_t extent : out_shapes[o]) count *= static_cast<size_t>(extent);
      results.emplace_back(count * outputs_[o].type->item);
      out.push_back(results.back().data);
    }
    if (options_.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(options_.delay_ms));
    int code = dt_run_shaped(model, in_shapes.data(), in.data(), out.data());
    if (code != DT_OK) throw HttpError(code == DT_ERR_ARGUMENT ? 400 : 500, dt_last_error());

    Reply reply;
    std::string& json = reply.body;
    std::string binary;
    json = "{\"model_name\":" + Quote(options_.name) + ",\"model_version\":\"1\"";
    if (id.has_value()) {
      auto text = id->try_cast<ffi::String>();
      if (text.has_value()) json += ",\"id\":" + Quote(std::string(*text));
    }
    json += ",\"outputs\":[";
    bool first = true;
    for (size_t o = 0; o < outputs_.size(); ++o) {
      if (!wanted[o]) continue;
      const Tensor& spec = outputs_[o];
      json += std::string(first ? "" : ",") + "{\"name\":" + Quote(spec.name) + ",\"datatype\":\"" + spec.type->kserve +
              "\",\"shape\":" + ShapeJson(out_shapes[o]);
      first = false;
      if (wanted[o] == 2) {
        json += ",\"parameters\":{\"binary_data_size\":" + std::to_string(results[o].bytes) + "}}";
        binary.append(results[o].data, results[o].bytes);
      } else {
        json += ",\"data\":";
        AppendData(json, *spec.type, results[o].data, results[o].bytes / spec.type->item);
        json += '}';
      }
    }
    json += "]}";
    if (!binary.empty()) {
      reply.json_length = json.size();
      json += binary;
    }
    return reply;
  }

  const Options& options() const { return options_; }

 private:
  static std::string Names(const std::vector<Tensor>& list) {
    std::string names;
    for (const Tensor& tensor : list) names += (names.empty() ? "'" : ", '") + tensor.name + "'";
    return names;
  }

  static std::vector<int64_t> ParseShape(const ffi::json::Object& input, const Tensor& spec, const std::string& what) {
    auto value = Get(input, "shape");
    if (!value.has_value()) throw BadRequest(what + " has no \"shape\"");
    auto list = value->try_cast<ffi::json::Array>();
    if (!list.has_value()) throw BadRequest(what + ": \"shape\" must be an array of sizes");
    std::vector<int64_t> shape;
    for (const ffi::Any& extent : *list) {
      if (extent.type_index() != ffi::TypeIndex::kTVMFFIInt || extent.cast<int64_t>() < 0) {
        throw BadRequest(what + ": \"shape\" must be an array of non-negative integers");
      }
      shape.push_back(extent.cast<int64_t>());
    }
    if (shape.size() != spec.shape.size()) {
      throw BadRequest(what + " has shape " + ShapeJson(shape) + " but the model takes " + ShapeJson(spec.shape) +
                       (spec.shape.size() != shape.size() ? " (" + std::to_string(spec.shape.size()) + " dimensions)" : ""));
    }
    for (size_t d = 0; d < shape.size(); ++d) {
      if (spec.shape[d] >= 0 && shape[d] != spec.shape[d]) {
        throw BadRequest(what + " has shape " + ShapeJson(shape) + " but the model takes " + ShapeJson(spec.shape) +
                         (ShapeJson(spec.shape).find("-1") != std::string::npos ? " (-1: any size)" : ""));
      }
    }
    return shape;
  }

  Options options_;
  std::vector<Tensor> inputs_, outputs_;
};

// ---- workers and their queue ---------------------------------------------------------------

struct Job {
  std::string body;
  size_t json_length = std::string::npos;
  std::function<void(Reply)> done;
};

class Workers {
 public:
  Workers(const Service& service, size_t capacity) : service_(service), capacity_(capacity) {}

  void Start(std::vector<std::unique_ptr<deploytool::Model>>& models) {
    for (auto& model : models) {
      dt_model* handle = model->handle();
      threads_.emplace_back([this, handle] { Loop(handle); });
    }
  }

  // False when the queue is full: `capacity` requests are waiting or running.
  bool Push(Job job, size_t* waiting) {
    std::lock_guard<std::mutex> guard(lock_);
    *waiting = queue_.size();
    if (pending_ >= capacity_) return false;
    ++pending_;
    queue_.push_back(std::move(job));
    ready_.notify_one();
    return true;
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> guard(lock_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& thread : threads_) thread.join();
    threads_.clear();
  }

 private:
  void Loop(dt_model* model) {
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> guard(lock_);
        ready_.wait(guard, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      Reply reply;
      try {
        reply = service_.Infer(model, job.body, job.json_length);
      } catch (const HttpError& error) {
        reply = ErrorReply(error.status, error.what());
      } catch (const std::exception& error) {
        reply = ErrorReply(500, std::string("the server failed: ") + error.what());
      }
      job.body.clear();
      {
        std::lock_guard<std::mutex> guard(lock_);
        --pending_;
      }
      job.done(std::move(reply));
    }
  }

  const Service& service_;
  size_t capacity_;
  std::mutex lock_;
  std::condition_variable ready_;
  std::deque<Job> queue_;
  size_t pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// ---- HTTP ----------------------------------------------------------------------------------

class Server;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, Server& server);
  ~Connection();
  void Start() { ReadHeader(); }
  void CloseIfIdle();  // on the connection's strand

 private:
  void ReadHeader();
  void OnHeader(beast::error_code ec);
  void ReadBody();
  void OnBody(beast::error_code ec);
  void OnReadError(beast::error_code ec);
  void Route();
  void Send(Reply reply, bool close = false, const char* allow = nullptr);
  void Linger();
  void Close();

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::empty_body> continue_;
  http::response<http::string_body> response_;
  Server& server_;
  bool busy_ = false;  // a request has begun: finish it before closing on shutdown
  bool keep_alive_ = true;
  bool linger_ = false;  // the request was not read to its end: drain it before closing
  std::vector<char> discard_;
  size_t discarded_ = 0;
  unsigned version_ = 11;
};

class Server {
 public:
  Server(net::io_context& ioc, Service& service, Workers& workers)
      : ioc_(ioc), acceptor_(net::make_strand(ioc)), service_(service), workers_(workers) {}

  unsigned short Listen(const std::string& host, int port) {
    beast::error_code ec;
    auto address = net::ip::make_address(host, ec);
    if (ec) throw std::runtime_error("--host " + host + " is not an IP address");
    tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(endpoint, ec);
    if (ec) throw std::runtime_error("cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
    acceptor_.listen(net::socket_base::max_listen_connections);
    Accept();
    return acceptor_.local_endpoint().port();
  }

  // SIGTERM/SIGINT: stop accepting, close idle connections, let busy ones finish.
  void Drain() {
    draining_ = true;
    net::post(acceptor_.get_executor(), [this] {
      beast::error_code ignored;
      acceptor_.close(ignored);
    });
    std::lock_guard<std::mutex> guard(lock_);
    for (auto& weak : connections_) {
      if (auto connection = weak.lock()) connection->CloseIfIdle();
    }
  }

  void Track(const std::shared_ptr<Connection>& connection) {
    std::lock_guard<std::mutex> guard(lock_);
    if (connections_.size() > 64 && connections_.size() > 2 * static_cast<size_t>(open_)) {
      for (auto it = connections_.begin(); it != connections_.end();) it = it->expired() ? connections_.erase(it) : std::next(it);
    }
    connections_.insert(connection);
    ++open_;
  }
  void Untrack() { --open_; }
  int open() const { return open_; }

  bool draining() const { return draining_; }
  bool ready() const { return ready_; }
  void SetReady() { ready_ = true; }
  Service& service() { return service_; }
  Workers& workers() { return workers_; }

 private:
  void Accept() {
    acceptor_.async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
      if (!ec && !draining_) {
        auto connection = std::make_shared<Connection>(std::move(socket), *this);
        Track(connection);
        connection->Start();
      }
      Accept();
    });
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  Service& service_;
  Workers& workers_;
  std::mutex lock_;
  std::set<std::weak_ptr<Connection>, std::owner_less<std::weak_ptr<Connection>>> connections_;
  std::atomic<int> open_{0};
  std::atomic<bool> draining_{false}, ready_{false};
};

constexpr auto kIdleTimeout = std::chrono::seconds(60);
constexpr auto kIoTimeout = std::chrono::seconds(60);

Connection::Connection(tcp::socket socket, Server& server) : stream_(std::move(socket)), server_(server) {}

Connection::~Connection() { server_.Untrack(); }

void Connection::CloseIfIdle() {
  net::post(stream_.get_executor(), [self = shared_from_this()] {
    if (!self->busy_) self->Close();
  });
}

void Connection::ReadHeader() {
  if (server_.draining()) return Close();
  busy_ = false;
  parser_.emplace();
  parser_->body_limit(server_.service().options().max_body);
  stream_.expires_after(kIdleTimeout);
  http::async_read_header(stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
}

void Connection::OnHeader(beast::error_code ec) {
  if (ec) return OnReadError(ec);
  busy_ = true;
  auto& request = parser_->get();
  version_ = request.version();
  keep_alive_ = request.keep_alive();
  if (beast::iequals(request[http::field::expect], "100-continue")) {
    continue_ = http::response<http::empty_body>(http::status::continue_, version_);
    stream_.expires_after(kIoTimeout);
    http::async_write(stream_, continue_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      self->ReadBody();
    });
    return;
  }
  ReadBody();
}

void Connection::ReadBody() {
  stream_.expires_after(kIoTimeout);
  http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
}

void Connection::OnBody(beast::error_code ec) {
  if (ec) return OnReadError(ec);
  Route();
}

void Connection::OnReadError(beast::error_code ec) {
  if (ec == http::error::body_limit) {
    return Send(ErrorReply(413, "the request body is larger than the server's limit of " +
                                    std::to_string(server_.service().options().max_body) + " bytes (--max-body-bytes)"),
                true);
  }
  if (ec == http::error::header_limit) return Send(ErrorReply(431, "the request's header is too large"), true);
  if (ec.category() == http::make_error_code(http::error::bad_method).category() && ec != http::error::end_of_stream &&
      ec != http::error::partial_message) {
    return Send(ErrorReply(400, "malformed HTTP request: " + ec.message()), true);
  }
  Close();  // the client went away, timed out, or the server is stopping
}

std::string Decode(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

void Connection::Route() {
  auto& request = parser_->get();
  std::string target(request.target());
  target = target.substr(0, target.find('?'));
  std::vector<std::string> parts;
  std::stringstream path(target);
  for (std::string part; std::getline(path, part, '/');) {
    if (!part.empty()) parts.push_back(Decode(part));
  }
  http::verb method = request.method();
  auto expect = [&](http::verb allowed) {
    if (method == allowed) return true;
    Send(ErrorReply(405, std::string("use ") + std::string(http::to_string(allowed)) + " for " + target), false,
         allowed == http::verb::get ? "GET" : "POST");
    return false;
  };
  Service& service = server_.service();
  if (parts.empty() || parts[0] != "v2") return Send(ErrorReply(404, "no such endpoint: " + target));
  if (parts.size() == 1) {
    if (expect(http::verb::get)) {
      Send({200, "{\"name\":\"deploytool-serve\",\"version\":\"1\",\"extensions\":[\"binary_tensor_data\"]}"});
    }
    return;
  }
  if (parts.size() == 3 && parts[1] == "health" && (parts[2] == "live" || parts[2] == "ready")) {
    if (!expect(http::verb::get)) return;
    if (parts[2] == "live") return Send({200, "{\"live\":true}"});
    bool ready = server_.ready() && !server_.draining();
    return Send({ready ? 200u : 503u, std::string("{\"ready\":") + (ready ? "true" : "false") + "}"});
  }
  if (parts[1] != "models" || parts.size() < 3) return Send(ErrorReply(404, "no such endpoint: " + target));
  if (parts[2] != service.name()) {
    return Send(ErrorReply(404, "unknown model '" + parts[2] + "': this server serves '" + service.name() + "'"));
  }
  std::vector<std::string> rest(parts.begin() + 3, parts.end());
  if (rest.size() >= 2 && rest[0] == "versions") {
    if (rest[1] != "1") {
      return Send(ErrorReply(404, "model '" + service.name() + "' has no version '" + rest[1] + "' (it has version 1)"));
    }
    rest.erase(rest.begin(), rest.begin() + 2);
  }
  if (rest.empty()) {
    if (expect(http::verb::get)) Send({200, service.Metadata()});
    return;
  }
  if (rest.size() == 1 && rest[0] == "ready") {
    if (!expect(http::verb::get)) return;
    bool ready = server_.ready();
    return Send({ready ? 200u : 503u, "{\"name\":" + Quote(service.name()) + ",\"ready\":" + (ready ? "true" : "false") + "}"});
  }
  if (rest.size() != 1 || rest[0] != "infer") return Send(ErrorReply(404, "no such endpoint: " + target));
  if (!expect(http::verb::post)) return;
  if (!server_.ready()) return Send(ErrorReply(503, "the model is still loading"));
  size_t json_length = std::string::npos;
  auto header = request.find("Inference-Header-Content-Length");
  if (header != request.end()) {
    std::string value(header->value());
    char* end = nullptr;
    unsigned long long parsed = std::strtoull(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0') return Send(ErrorReply(400, "Inference-Header-Content-Length must be a number"));
    json_length = static_cast<size_t>(parsed);
  }
  Job job{std::move(request.body()), json_length, nullptr};
  auto executor = stream_.get_executor();
  job.done = [self = shared_from_this(), executor](Reply reply) {
    net::post(executor, [self, reply = std::move(reply)]() mutable { self->Send(std::move(reply)); });
  };
  size_t waiting = 0;
  if (!server_.workers().Push(std::move(job), &waiting)) {
    Send(ErrorReply(503, "the server is busy: " + std::to_string(waiting) + " requests are waiting for a worker (--max-queue " +
                             std::to_string(service.options().max_queue) + "); retry later"));
  }
}

void Connection::Send(Reply reply, bool close, const char* allow) {
  keep_alive_ = keep_alive_ && !close && !server_.draining();
  linger_ = close;
  response_ = http::response<http::string_body>(static_cast<http::status>(reply.status), version_);
  response_.set(http::field::server, "deploytool-serve");
  if (allow != nullptr) response_.set(http::field::allow, allow);
  if (reply.json_length != std::string::npos) {
    response_.set(http::field::content_type, "application/octet-stream");
    response_.set("Inference-Header-Content-Length", std::to_string(reply.json_length));
  } else {
    response_.set(http::field::content_type, "application/json");
  }
  response_.body() = std::move(reply.body);
  response_.keep_alive(keep_alive_);
  response_.prepare_payload();
  busy_ = true;
  stream_.expires_after(kIoTimeout);
  http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code ec, size_t) {
    self->response_ = {};
    if (!ec && self->linger_) return self->Linger();
    if (ec || !self->keep_alive_) return self->Close();
    self->ReadHeader();
  });
}

// After an error that left the request unread (413, malformed HTTP): stop sending, then read
// and drop what the client still sends for a while, so that closing does not reset the
// connection before the client has read the response.
void Connection::Linger() {
  beast::error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  if (discard_.empty()) {
    discard_.resize(1 << 16);
    stream_.expires_after(std::chrono::seconds(2));
  }
  stream_.async_read_some(net::buffer(discard_), [self = shared_from_this()](beast::error_code ec, size_t n) {
    self->discarded_ += n;
    if (ec || self->discarded_ > (size_t{64} << 20)) return self->Close();
    self->Linger();
  });
}

void Connection::Close() {
  beast::error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream_.close();
}

// ---- start-up ------------------------------------------------------------------------------

std::string OwnPackage() {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return ".";
  std::string path(exe, static_cast<size_t>(n));
  path = path.substr(0, path.rfind('/'));  // bin/
  return path.substr(0, path.rfind('/'));
}

std::string ManifestModelName(const std::string& package) {
  std::ifstream in(package + "/manifest.json", std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  ffi::String error;
  ffi::Any manifest = ffi::json::Parse(ffi::String(text.str()), &error);
  auto object = manifest.try_cast<ffi::json::Object>();
  if (error.empty() && object.has_value()) {
    if (auto model = Get(*object, "model")) {
      if (auto fields = model->try_cast<ffi::json::Object>()) {
        if (auto name = Get(*fields, "name")) {
          if (auto value = name->try_cast<ffi::String>()) return std::string(*value);
        }
      }
    }
  }
  return "model";
}

std::vector<Tensor> Tensors(const std::vector<deploytool::TensorInfo>& infos) {
  std::vector<Tensor> tensors;
  for (const auto& info : infos) {
    const DataType* type = FindDataType(info.dtype);
    if (type == nullptr) throw std::runtime_error("tensor '" + info.name + "' has dtype " + info.dtype + ", which the server cannot carry");
    tensors.push_back({info.name, type, info.shape});
  }
  return tensors;
}

long ParseCount(const std::string& option, const std::string& text, long min_value) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < min_value) {
    std::fprintf(stderr, "error: %s needs a whole number >= %ld, got '%s'\n", option.c_str(), min_value, text.c_str());
    std::exit(2);
  }
  return value;
}

// TVM threads per run when several workers share the CPUs: the CPUs this process may use, split.
void DefaultThreads(const Options& options) {
  if (options.threads > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(options.threads).c_str(), 1);
    return;
  }
  if (options.workers < 2 || std::getenv("TVM_NUM_THREADS") != nullptr || std::getenv("OMP_NUM_THREADS") != nullptr) return;
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  long per_worker = std::max(1L, static_cast<long>(CPU_COUNT(&allowed)) / options.workers);
  setenv("TVM_NUM_THREADS", std::to_string(per_worker).c_str(), 1);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: %s needs a value\n%s", arg.c_str(), kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::printf("%s", kUsage);
      return 0;
    } else if (arg == "--port") {
      options.port = static_cast<int>(ParseCount(arg, value(), 0));
      if (options.port > 65535) {
        std::fprintf(stderr, "error: --port must be at most 65535\n");
        return 2;
      }
    } else if (arg == "--host") {
      options.host = value();
    } else if (arg == "--name") {
      options.name = value();
    } else if (arg == "--device") {
      options.device = value();
    } else if (arg == "--workers") {
      options.workers = ParseCount(arg, value(), 1);
    } else if (arg == "--threads") {
      options.threads = ParseCount(arg, value(), 1);
    } else if (arg == "--max-queue") {
      options.max_queue = ParseCount(arg, value(), 0);
    } else if (arg == "--max-body-bytes") {
      options.max_body = static_cast<size_t>(ParseCount(arg, value(), 1));
    } else if (arg == "--io-threads") {
      options.io_threads = ParseCount(arg, value(), 1);
    } else if (arg == "--drain-seconds") {
      options.drain_seconds = static_cast<double>(ParseCount(arg, value(), 0));
    } else if (arg == "--delay-ms") {
      options.delay_ms = ParseCount(arg, value(), 0);
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "error: unknown option %s\n%s", arg.c_str(), kUsage);
      return 2;
    } else if (options.package.empty()) {
      options.package = arg;
    } else {
      std::fprintf(stderr, "error: unexpected argument %s\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  if (options.package.empty()) options.package = OwnPackage();
  std::signal(SIGPIPE, SIG_IGN);
  DefaultThreads(options);

  // The first model gives the metadata; listening starts before the other workers' models load,
  // so /v2/health/live answers while /v2/health/ready waits for them.
  std::vector<std::unique_ptr<deploytool::Model>> models;
  std::optional<Service> service;
  try {
    models.push_back(std::make_unique<deploytool::Model>(options.package, options.device));
    if (options.name.empty()) options.name = ManifestModelName(options.package);
    service.emplace(options, Tensors(models[0]->inputs()), Tensors(models[0]->outputs()));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  Workers workers(*service, static_cast<size_t>(options.workers + options.max_queue));
  net::io_context ioc;
  Server server(ioc, *service, workers);
  auto guard = net::make_work_guard(ioc);

  // SIGTERM/SIGINT: drain, then stop once every connection has closed (or after --drain-seconds).
  net::signal_set signals(ioc, SIGINT, SIGTERM);
  net::steady_timer drain_timer(ioc);
  std::chrono::steady_clock::time_point deadline;
  std::function<void()> wait_drained = [&] {
    drain_timer.expires_after(std::chrono::milliseconds(10));
    drain_timer.async_wait([&](beast::error_code) {
      if (server.open() == 0) {
        guard.reset();
        ioc.stop();
      } else if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "deploytool-serve: %d connections still busy after --drain-seconds %g; exiting\n",
                     server.open(), options.drain_seconds);
        std::fflush(stderr);
        std::_Exit(1);
      } else {
        wait_drained();
      }
    });
  };
  signals.async_wait([&](beast::error_code ec, int signal) {
    if (ec) return;
    std::fprintf(stderr, "deploytool-serve: %s: finishing in-flight requests, then exiting\n",
                 signal == SIGTERM ? "SIGTERM" : "SIGINT");
    std::fflush(stderr);
    deadline = std::chrono::steady_clock::now() +
               std::chrono::milliseconds(static_cast<long>(options.drain_seconds * 1000));
    server.Drain();
    wait_drained();
    signals.async_wait([](beast::error_code ec, int) {  // a second signal: leave at once
      if (ec) return;
      std::fprintf(stderr, "deploytool-serve: second signal: exiting now\n");
      std::_Exit(1);
    });
  });

  unsigned short port;
  try {
    port = server.Listen(options.host, options.port);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  std::string host = options.host.find(':') != std::string::npos ? "[" + options.host + "]" : options.host;
  std::printf("deploytool-serve: listening on http://%s:%u\n", host.c_str(), port);
  std::fflush(stdout);
  std::vector<std::thread> io_threads;
  for (long i = 0; i < options.io_threads; ++i) io_threads.emplace_back([&ioc] { ioc.run(); });

  int status = 0;
  try {
    while (static_cast<long>(models.size()) < options.workers) {
      models.push_back(std::make_unique<deploytool::Model>(options.package, options.device));
    }
    workers.Start(models);
    server.SetReady();
    if (!server.draining()) std::printf("deploytool-serve: model '%s' ready at http://%s:%u/v2/models/%s (%ld worker%s, max queue %ld)\n",
                options.name.c_str(), host.c_str(), port, options.name.c_str(), options.workers,
                options.workers == 1 ? "" : "s", options.max_queue);
    std::fflush(stdout);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    status = 1;
    guard.reset();
    ioc.stop();
  }
  for (auto& thread : io_threads) thread.join();
  workers.Stop();
  models.clear();
  if (status == 0) std::fprintf(stderr, "deploytool-serve: stopped\n");
  return status;
}
