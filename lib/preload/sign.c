/*
 * sign.c — Ed25519 manifest signatures with OpenSSL EVP (see sign.h).
 */
#include "ns_setup.h"

#include "core/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "preload/sign.h"

#define ED25519_SIG_LEN 64
#define ED25519_PUB_LEN 32


static int b64_val(int c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

int ns_b64_decode(const char *s, size_t len, uint8_t *out, size_t out_cap, size_t *out_len) {
  size_t i, o = 0;
  if (len == 0 || len % 4 != 0)
    return -1;
  for (i = 0; i < len; i += 4) {
    int v[4], k, pad = 0;
    for (k = 0; k < 4; k++) {
      if (s[i + k] == '=' && i + 4 == len && k >= 2) {
        v[k] = 0;
        pad++;
      } else {
        if (pad)
          return -1; /* data after '=' */
        v[k] = b64_val((unsigned char)s[i + k]);
        if (v[k] < 0)
          return -1;
      }
    }
    if (o + 3 - (size_t)pad > out_cap)
      return -1;
    out[o++] = (uint8_t)(v[0] << 2 | v[1] >> 4);
    if (pad < 2)
      out[o++] = (uint8_t)((v[1] & 15) << 4 | v[2] >> 2);
    if (pad < 1)
      out[o++] = (uint8_t)((v[2] & 3) << 6 | v[3]);
    /* canonical: the bits dropped by padding must be zero */
    if ((pad == 1 && (v[2] & 3)) || (pad == 2 && (v[1] & 15)))
      return -1;
  }
  *out_len = o;
  return 0;
}

static void b64_encode(const uint8_t *in, size_t len, char *out) {
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

static netstash_error key_id_of(EVP_PKEY *pk, char key_id[NS_KEY_ID_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t raw[ED25519_PUB_LEN], md[32];
  size_t rawlen = sizeof(raw);
  unsigned int mdlen = 0;
  int i;
  if (EVP_PKEY_get_raw_public_key(pk, raw, &rawlen) != 1 || rawlen != ED25519_PUB_LEN)
    return NETSTASH_E_INTERNAL;
  if (EVP_Digest(raw, rawlen, md, &mdlen, EVP_sha256(), NULL) != 1)
    return NETSTASH_E_INTERNAL;
  for (i = 0; i < NS_KEY_ID_LEN / 2; i++) {
    key_id[2 * i] = hex[md[i] >> 4];
    key_id[2 * i + 1] = hex[md[i] & 15];
  }
  key_id[NS_KEY_ID_LEN] = '\0';
  return NETSTASH_OK;
}

static FILE *create_file(const char *path, mode_t mode, char *detail, size_t detail_len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  FILE *f;
  if (fd < 0) {
    if (detail && detail_len)
      snprintf(detail, detail_len, "%s: %s", path, strerror(errno));
    return NULL;
  }
  /* the umask may have narrowed the mode; the private key must be exactly 0600 */
  if (fchmod(fd, mode) != 0 || !(f = fdopen(fd, "w"))) {
    if (detail && detail_len)
      snprintf(detail, detail_len, "%s: %s", path, strerror(errno));
    close(fd);
    unlink(path);
    return NULL;
  }
  return f;
}

netstash_error ns_sign_keygen(const char *keyfile, char key_id[NS_KEY_ID_LEN + 1], char *detail,
                              size_t detail_len) {
  EVP_PKEY *pk = NULL;
  FILE *f = NULL;
  char *pubpath = NULL;
  size_t n;
  int wrote_priv = 0;
  netstash_error rv = NETSTASH_E_INTERNAL;

  if (!keyfile || !*keyfile || !key_id)
    return NETSTASH_E_INVALID_ARGUMENT;
  n = strlen(keyfile) + 5;
  pubpath = malloc(n);
  if (!pubpath)
    return NETSTASH_E_NOMEM;
  snprintf(pubpath, n, "%s.pub", keyfile);
  if (!(pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"))) {
    ns_detailf(detail, detail_len, "Ed25519 key generation failed");
    goto done;
  }
  if ((rv = key_id_of(pk, key_id)) != NETSTASH_OK)
    goto done;
  rv = NETSTASH_E_IO;
  if (!(f = create_file(keyfile, 0600, detail, detail_len)))
    goto done;
  wrote_priv = 1;
  if (PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) != 1 || fclose(f) != 0) {
    f = NULL;
    ns_detailf(detail, detail_len, "%s: cannot write the private key", keyfile);
    goto done;
  }
  if (!(f = create_file(pubpath, 0644, detail, detail_len)))
    goto done;
  if (PEM_write_PUBKEY(f, pk) != 1 || fclose(f) != 0) {
    f = NULL;
    unlink(pubpath);
    ns_detailf(detail, detail_len, "%s: cannot write the public key", pubpath);
    goto done;
  }
  f = NULL;
  rv = NETSTASH_OK;

done:
  if (f)
    fclose(f);
  if (rv != NETSTASH_OK && wrote_priv)
    unlink(keyfile);
  EVP_PKEY_free(pk);
  free(pubpath);
  return rv;
}

static EVP_PKEY *load_key(const char *path, int private_key, char *detail, size_t detail_len) {
  FILE *f = fopen(path, "re");
  EVP_PKEY *pk;
  if (!f) {
    if (detail && detail_len)
      snprintf(detail, detail_len, "%s: %s", path, strerror(errno));
    return NULL;
  }
  pk =
      private_key ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
  fclose(f);
  if (pk && EVP_PKEY_get_base_id(pk) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(pk);
    pk = NULL;
  }
  if (!pk)
    ns_detailf(detail, detail_len,
               private_key ? "%s: not an Ed25519 private key (PEM)"
                           : "%s: not an Ed25519 public key (PEM)",
               path);
  return pk;
}

netstash_error ns_sign_create(const ns_mem *mem, const char *keyfile, const uint8_t *msg,
                              size_t msg_len, char **sig_json, size_t *sig_len,
                              char key_id[NS_KEY_ID_LEN + 1], char *detail, size_t detail_len) {
  EVP_PKEY *pk = NULL;
  EVP_MD_CTX *ctx = NULL;
  uint8_t sig[ED25519_SIG_LEN];
  size_t slen = sizeof(sig);
  char b64[4 * ((ED25519_SIG_LEN + 2) / 3) + 1];
  char kid[NS_KEY_ID_LEN + 1];
  json_t *o = NULL;
  char *text = NULL;
  netstash_error rv = NETSTASH_E_INTERNAL;

  if (!mem || !keyfile || (!msg && msg_len) || !sig_json)
    return NETSTASH_E_INVALID_ARGUMENT;
  *sig_json = NULL;
  if (!(pk = load_key(keyfile, 1, detail, detail_len))) {
    rv = NETSTASH_E_IO;
    goto done;
  }
  if ((rv = key_id_of(pk, kid)) != NETSTASH_OK)
    goto done;
  rv = NETSTASH_E_INTERNAL;
  if (!(ctx = EVP_MD_CTX_new()) || EVP_DigestSignInit(ctx, NULL, NULL, NULL, pk) != 1 ||
      EVP_DigestSign(ctx, sig, &slen, msg ? msg : (const uint8_t *)"", msg_len) != 1 ||
      slen != ED25519_SIG_LEN) {
    ns_detailf(detail, detail_len, "Ed25519 signing failed");
    goto done;
  }
  b64_encode(sig, slen, b64);
  o = json_pack("{s:s, s:s, s:s}", "key_id", kid, "alg", "ed25519", "sig", b64);
  if (!o || !(text = json_dumps(o, JSON_PRESERVE_ORDER))) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  {
    size_t n = strlen(text);
    char *copy = ns_malloc(mem, n + 2);
    if (!copy) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    memcpy(copy, text, n);
    copy[n] = '\n';
    copy[n + 1] = '\0';
    *sig_json = copy;
    if (sig_len)
      *sig_len = n + 1;
  }
  if (key_id)
    memcpy(key_id, kid, sizeof(kid));
  rv = NETSTASH_OK;

done:
  free(text);
  json_decref(o);
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pk);
  return rv;
}

static int is_key_id(const char *s) {
  size_t i;
  for (i = 0; i < NS_KEY_ID_LEN; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return s[NS_KEY_ID_LEN] == '\0';
}

netstash_error ns_sign_verify(const uint8_t *msg, size_t msg_len, const uint8_t *sig,
                              size_t sig_len, const char *const *pubfiles, size_t n_pubfiles,
                              char key_id[NS_KEY_ID_LEN + 1], char *detail, size_t detail_len) {
  json_t *o = NULL;
  json_error_t jerr;
  const char *kid = NULL, *alg = NULL, *b64 = NULL;
  uint8_t raw[ED25519_SIG_LEN + 3];
  size_t raw_len = 0, i;
  EVP_PKEY *pk = NULL;
  EVP_MD_CTX *ctx = NULL;
  netstash_error rv = NETSTASH_E_SIGNATURE;

  if ((!msg && msg_len) || (!sig && sig_len) || (!pubfiles && n_pubfiles))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (sig_len > NS_SIG_MAX_LEN) {
    ns_detailf(detail, detail_len, "malformed signature file: larger than 4096 bytes");
    goto done;
  }
  o = json_loadb((const char *)sig, sig_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!o || json_unpack(o, "{s:s, s:s, s:s !}", "key_id", &kid, "alg", &alg, "sig", &b64) != 0) {
    ns_detailf(detail, detail_len,
               "malformed signature file: expected {\"key_id\", \"alg\", \"sig\"}");
    goto done;
  }
  if (strcmp(alg, "ed25519") != 0) {
    ns_detailf(detail, detail_len, "malformed signature file: unknown alg \"%s\"", alg);
    goto done;
  }
  if (!is_key_id(kid)) {
    ns_detailf(detail, detail_len, "malformed signature file: bad key_id \"%s\"", kid);
    goto done;
  }
  if (ns_b64_decode(b64, strlen(b64), raw, sizeof(raw), &raw_len) != 0 ||
      raw_len != ED25519_SIG_LEN) {
    ns_detailf(detail, detail_len, "malformed signature file: sig is not 64 bytes of base64");
    goto done;
  }
  for (i = 0; i < n_pubfiles; i++) {
    char this_id[NS_KEY_ID_LEN + 1];
    EVP_PKEY *cand = load_key(pubfiles[i], 0, detail, detail_len);
    if (!cand) {
      rv = NETSTASH_E_IO;
      goto done;
    }
    if (key_id_of(cand, this_id) == NETSTASH_OK && strcmp(this_id, kid) == 0) {
      pk = cand;
      break;
    }
    EVP_PKEY_free(cand);
  }
  if (!pk) {
    ns_detailf(detail, detail_len, "unknown key id %s (not among the trusted keys)", kid);
    goto done;
  }
  if (!(ctx = EVP_MD_CTX_new()) || EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) != 1) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  if (EVP_DigestVerify(ctx, raw, raw_len, msg ? msg : (const uint8_t *)"", msg_len) != 1) {
    ns_detailf(detail, detail_len,
               "bad signature by key %s: the manifest was altered or "
               "signed by another key",
               kid);
    goto done;
  }
  if (key_id)
    memcpy(key_id, kid, NS_KEY_ID_LEN + 1);
  rv = NETSTASH_OK;

done:
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pk);
  json_decref(o);
  return rv;
}
