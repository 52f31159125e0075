// Minimal reader and writer of NumPy .npy files (C order, little-endian), for the native runner.
#ifndef DEPLOYTOOL_NPY_HPP_
#define DEPLOYTOOL_NPY_HPP_

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::string descr;  // "<f4", "<i8", ...
  std::vector<int64_t> shape;
  std::vector<char> data;
};

inline std::string DescrOf(const std::string& dtype) {
  if (dtype == "float32") return "<f4";
  if (dtype == "float64") return "<f8";
  if (dtype == "float16") return "<f2";
  if (dtype == "int64") return "<i8";
  if (dtype == "int32") return "<i4";
  if (dtype == "int16") return "<i2";
  if (dtype == "int8") return "|i1";
  if (dtype == "uint8") return "|u1";
  if (dtype == "bool") return "|b1";
  throw std::runtime_error("no .npy type for dtype " + dtype);
}

inline std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
  return text + ")";
}

inline std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error("no '" + key + "' in the .npy header");
  size_t colon = header.find(':', at);
  size_t begin = colon == std::string::npos ? colon : header.find_first_not_of(' ', colon + 1);
  if (begin == std::string::npos) throw std::runtime_error("a malformed '" + key + "' in the .npy header");
  size_t end = header[begin] == '(' ? header.find(')', begin)
               : header[begin] == '\'' ? header.find('\'', begin + 1)
                                       : header.find_first_of(",}", begin);
  if (end == std::string::npos) throw std::runtime_error("a malformed '" + key + "' in the .npy header");
  if (header[begin] == '(' || header[begin] == '\'') ++end;
  return header.substr(begin, end - begin);
}

inline Array Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::string(magic, 6) != "\x93NUMPY") throw std::runtime_error(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char len[2];
    in.read(reinterpret_cast<char*>(len), 2);
    header_len = len[0] | (len[1] << 8);
  } else {
    unsigned char len[4];
    in.read(reinterpret_cast<char*>(len), 4);
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<uint32_t>(len[3]) << 24);
  }
  if (!in || header_len > (1u << 20)) throw std::runtime_error(path + " has a malformed .npy header");
  std::string header(header_len, ' ');
  in.read(&header[0], header_len);
  if (static_cast<uint32_t>(in.gcount()) != header_len) throw std::runtime_error(path + " is truncated");
  Array array;
  std::string descr = HeaderValue(header, "descr");
  if (descr.size() < 2) throw std::runtime_error(path + " has a malformed .npy header");
  array.descr = descr.substr(1, descr.size() - 2);
  if (HeaderValue(header, "fortran_order") != "False") throw std::runtime_error(path + " is in Fortran order");
  std::string shape = HeaderValue(header, "shape");
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') {
    throw std::runtime_error(path + " has a malformed shape in its .npy header");
  }
  size_t item = 0;
  for (const char* known : {"<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1"}) {
    if (array.descr == known) item = static_cast<size_t>(array.descr[2] - '0');
  }
  if (item == 0) throw std::runtime_error(path + " holds the unsupported .npy type '" + array.descr + "'");
  // The bytes after the header bound the shape, so a header declaring a huge one allocates nothing.
  std::streamoff data_start = in.tellg();
  in.seekg(0, std::ios::end);
  std::streamoff file_end = in.tellg();
  in.seekg(data_start);
  if (!in || data_start < 0 || file_end < data_start) throw std::runtime_error(path + " is truncated");
  size_t available = static_cast<size_t>(file_end - data_start);
  std::stringstream dims(shape.substr(1, shape.size() - 2));
  std::string dim;
  size_t bytes = item;
  while (std::getline(dims, dim, ',')) {
    size_t first = dim.find_first_not_of(' '), last = dim.find_last_not_of(' ');
    if (first == std::string::npos) continue;
    dim = dim.substr(first, last - first + 1);
    if (dim.size() > 18 || dim.find_first_not_of("0123456789") != std::string::npos) {
      throw std::runtime_error(path + " has a malformed shape " + shape + " in its .npy header");
    }
    int64_t extent = std::stoll(dim);
    array.shape.push_back(extent);
    if (extent != 0 && bytes > available / static_cast<size_t>(extent)) {
      throw std::runtime_error(path + " declares shape " + shape + ", more data than its " +
                               std::to_string(available) + " bytes");
    }
    bytes *= static_cast<size_t>(extent);
  }
  if (bytes > available) throw std::runtime_error(path + " is truncated");
  array.data.resize(bytes);
  in.read(array.data.data(), static_cast<std::streamsize>(array.data.size()));
  if (static_cast<size_t>(in.gcount()) != array.data.size()) throw std::runtime_error(path + " is truncated");
  return array;
}

// The .npy header for `descr` and `shape`, padded so the data starts at a multiple of 64 bytes.
inline std::string Header(const std::string& descr, const std::vector<int64_t>& shape) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + ShapeText(shape) + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  char len[2] = {static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)};
  return std::string("\x93NUMPY\x01\x00", 8) + std::string(len, 2) + header;
}

// Writes a whole .npy file to `f`; the caller checks ferror/fclose.
inline void Write(std::FILE* f, const std::string& descr, const std::vector<int64_t>& shape, const void* data,
                  size_t nbytes) {
  std::string header = Header(descr, shape);
  std::fwrite(header.data(), 1, header.size(), f);
  std::fwrite(data, 1, nbytes, f);
}

inline void Save(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
                 const void* data, size_t nbytes) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  std::string header = Header(descr, shape);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace npy

#endif  // DEPLOYTOOL_NPY_HPP_
