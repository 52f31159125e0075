// Minimal reader and writer of NumPy .npy files (C order, little-endian), for the native runner.
#ifndef DEPLOYTOOL_NPY_HPP_
#define DEPLOYTOOL_NPY_HPP_

#include <cstdint>
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
  size_t begin = header.find_first_not_of(' ', colon + 1);
  size_t end = header[begin] == '(' ? header.find(')', begin) + 1
               : header[begin] == '\'' ? header.find('\'', begin + 1) + 1
                                       : header.find_first_of(",}", begin);
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
  std::string header(header_len, ' ');
  in.read(&header[0], header_len);
  Array array;
  std::string descr = HeaderValue(header, "descr");
  array.descr = descr.substr(1, descr.size() - 2);
  if (HeaderValue(header, "fortran_order") != "False") throw std::runtime_error(path + " is in Fortran order");
  std::string shape = HeaderValue(header, "shape");
  std::stringstream dims(shape.substr(1, shape.size() - 2));
  std::string dim;
  size_t count = 1;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(' ') == std::string::npos) continue;
    array.shape.push_back(std::stoll(dim));
    count *= static_cast<size_t>(array.shape.back());
  }
  size_t item = static_cast<size_t>(std::stoi(array.descr.substr(2)));
  array.data.resize(count * item);
  in.read(array.data.data(), static_cast<std::streamsize>(array.data.size()));
  if (static_cast<size_t>(in.gcount()) != array.data.size()) throw std::runtime_error(path + " is truncated");
  return array;
}

inline void Save(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
                 const void* data, size_t nbytes) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + ShapeText(shape) + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  char len[2] = {static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)};
  out.write(len, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
}

}  // namespace npy

#endif  // DEPLOYTOOL_NPY_HPP_
