// AES-256-XTS over 512-byte units, as dm-crypt's aes-xts-plain64: the tweak
// of unit n is n as a little-endian 64-bit number in a 16-byte IV. The cipher
// is OpenSSL's EVP_aes_256_xts from the OpenSSL that Node links; no cipher
// code lives here.
//
// Zero units: a ciphertext unit that is all zeros decrypts to zeros, so
// unwritten and discarded regions of a secure volume read as zeros, never as
// the decryption of zeros. (Encrypting zeros yields random-looking bytes, and
// a real ciphertext unit of all zeros has probability 2^-4096.)
//
// Runs synchronously on the calling thread: a 128 KiB request is tens of
// microseconds, the same order as the crc32c the engine already computes
// inline. src and dst may be the same buffer (in place).
#include <napi.h>
#include <openssl/evp.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace pxd {
namespace {

constexpr size_t kUnit = 512;

[[noreturn]] void Throw(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

Napi::Uint8Array Buf(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Uint8Array");
  }
  return info[i].As<Napi::Uint8Array>();
}

bool AllZero(const uint8_t* p) {
  uint64_t acc = 0;
  for (size_t i = 0; i < kUnit; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    acc |= w;
  }
  return acc == 0;
}

struct Ctx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~Ctx() { EVP_CIPHER_CTX_free(ctx); }
};

// xtsCrypt(key: 64 bytes, src, dst, firstUnit: number, encrypt: boolean)
Napi::Value JsXtsCrypt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5) Throw(env, "EINVAL", "xtsCrypt(key, src, dst, firstUnit, encrypt)");
  Napi::Uint8Array key = Buf(info, 0, "key");
  Napi::Uint8Array src = Buf(info, 1, "src");
  Napi::Uint8Array dst = Buf(info, 2, "dst");
  if (!info[3].IsNumber() || !info[4].IsBoolean()) {
    throw Napi::TypeError::New(env, "firstUnit must be a number and encrypt a boolean");
  }
  double first = info[3].As<Napi::Number>().DoubleValue();
  bool enc = info[4].As<Napi::Boolean>().Value();
  if (key.ByteLength() != 64) Throw(env, "EINVAL", "the XTS key must be 64 bytes");
  const uint8_t* k = key.Data();
  if (std::memcmp(k, k + 32, 32) == 0) Throw(env, "EINVAL", "the two XTS key halves must differ");
  size_t len = src.ByteLength();
  if (len % kUnit != 0) Throw(env, "EINVAL", "length is not a multiple of 512 bytes");
  if (dst.ByteLength() < len) Throw(env, "EINVAL", "dst is shorter than src");
  if (!(first >= 0 && first < 9007199254740992.0) || static_cast<double>(static_cast<uint64_t>(first)) != first) {
    Throw(env, "EINVAL", "firstUnit must be a non-negative integer");
  }
  uint64_t unit = static_cast<uint64_t>(first);
  thread_local Ctx c;
  if (!c.ctx) Throw(env, "ENOMEM", "EVP_CIPHER_CTX_new failed");
  const uint8_t* in = src.Data();
  uint8_t* out = dst.Data();
  if (EVP_CipherInit_ex(c.ctx, EVP_aes_256_xts(), nullptr, k, nullptr, enc ? 1 : 0) != 1) {
    Throw(env, "EIO", "EVP_CipherInit_ex (key) failed");
  }
  for (size_t off = 0; off < len; off += kUnit, ++unit) {
    if (!enc && AllZero(in + off)) {
      if (out + off != in + off) std::memset(out + off, 0, kUnit);
      continue;
    }
    uint8_t iv[16] = {0};
    for (int b = 0; b < 8; ++b) iv[b] = static_cast<uint8_t>(unit >> (8 * b));
    int n = 0;
    if (EVP_CipherInit_ex(c.ctx, nullptr, nullptr, nullptr, iv, -1) != 1 ||
        EVP_CipherUpdate(c.ctx, out + off, &n, in + off, static_cast<int>(kUnit)) != 1 ||
        n != static_cast<int>(kUnit)) {
      Throw(env, "EIO", "AES-XTS failed");
    }
  }
  return env.Undefined();
}

}  // namespace

void InitXts(Napi::Env env, Napi::Object exports) {
  exports.Set("xtsCrypt", Napi::Function::New<JsXtsCrypt>(env, "xtsCrypt"));
}

}  // namespace pxd
