/*
 * sign.h — Ed25519 detached signatures over the exact manifest bytes
 * (OpenSSL EVP). Internal.
 *
 * Key files are PEM: the private key (PKCS#8, mode 0600) and the public key
 * (SubjectPublicKeyInfo) at KEYFILE.pub. A key id is the first 16 hex digits
 * of SHA-256 over the raw 32-byte public key. A signature file (MANIFEST.sig)
 * is a small JSON object:
 *
 *   {"key_id": "3f2a9c0d11e4b7a8", "alg": "ed25519", "sig": "<base64>"}
 *
 * Verification only trusts public keys the caller pins (never a key that
 * travels with the manifest).
 */
#ifndef NS_PRELOAD_SIGN_H
#define NS_PRELOAD_SIGN_H

#include "ns_setup.h"

#define NS_KEY_ID_LEN 16    /* hex digits, a NUL follows */
#define NS_SIG_MAX_LEN 4096 /* a .sig file larger than this is malformed */

/* Creates a key pair: keyfile (created 0600, must not exist) and
 * keyfile.pub (0644). key_id receives the id. NETSTASH_E_IO (detail says
 * why), NETSTASH_E_INTERNAL, NETSTASH_E_NOMEM. */
netstash_error ns_sign_keygen(const char *keyfile, char key_id[NS_KEY_ID_LEN + 1], char *detail,
                              size_t detail_len);

/* Signs msg with the private key in keyfile. *sig_json is the .sig file's
 * content (NUL-terminated, free with ns_free(mem, ...)); key_id (if not
 * NULL) receives the signer's id. NETSTASH_E_IO (unreadable or not an
 * Ed25519 key), NETSTASH_E_INTERNAL, NETSTASH_E_NOMEM. */
netstash_error ns_sign_create(const ns_mem *mem, const char *keyfile, const uint8_t *msg,
                              size_t msg_len, char **sig_json, size_t *sig_len,
                              char key_id[NS_KEY_ID_LEN + 1], char *detail, size_t detail_len);

/* Verifies sig (a .sig file's content) over msg against the pinned public
 * key files. NETSTASH_OK, NETSTASH_E_SIGNATURE (detail: malformed .sig,
 * unknown key id, bad signature), NETSTASH_E_IO (a trusted key file is
 * unreadable or not an Ed25519 public key), NETSTASH_E_NOMEM. key_id (if not
 * NULL) receives the signer's id on success. */
netstash_error ns_sign_verify(const uint8_t *msg, size_t msg_len, const uint8_t *sig,
                              size_t sig_len, const char *const *pubfiles, size_t n_pubfiles,
                              char key_id[NS_KEY_ID_LEN + 1], char *detail, size_t detail_len);

/* Strict base64 (RFC 4648 §4, padding required, no whitespace) into out
 * (out_cap bytes). 0 and *out_len, or -1 when malformed or too long. */
int ns_b64_decode(const char *s, size_t len, uint8_t *out, size_t out_cap, size_t *out_len);

#endif /* NS_PRELOAD_SIGN_H */
