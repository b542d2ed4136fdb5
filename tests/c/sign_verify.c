/*
 * sign_verify.c: an interop test of the hsmpool PKCS #11 module, written the way a C consumer
 * would use it.
 *
 *   sign_verify <module.so> [full|ec]
 *
 * The module is configured through the HSMPOOL_CONF environment variable, which must name the
 * configuration of a scratch token (the program refuses to run without it: C_InitToken wipes
 * the token). "full" (the default) generates an RSA-2048 and
 * an EC P-256 key pair; "ec" skips RSA (for slow runs under valgrind).
 *
 * The program:
 *   - dlopens the module, fetches both C_GetInterface (3.0) and C_GetFunctionList (2.40);
 *   - initialises the token (C_InitToken), sets the user PIN (C_InitPIN as SO), logs in;
 *   - generates the key pairs and signs/verifies with CKM_SHA256_RSA_PKCS and CKM_ECDSA_SHA256,
 *     using the two-call length query (NULL buffer first), single- and multi-part, checks that a
 *     corrupted signature gives CKR_SIGNATURE_INVALID and a truncated one
 *     CKR_SIGNATURE_LEN_RANGE, and that a short buffer gives CKR_BUFFER_TOO_SMALL with the
 *     needed length written back (and the operation still active);
 *   - cross-checks the hash-and-sign mechanisms against the raw ones (CKM_RSA_PKCS over a
 *     DigestInfo, CKM_ECDSA over a digest made with C_Digest);
 *   - forks: the child must see CKR_CRYPTOKI_NOT_INITIALIZED, re-initialise, log in and sign;
 *     the parent must still be able to sign afterwards.
 *
 * It prints one line per check and ends with "sign_verify: N passed, M failed"; the exit
 * status is 0 only if nothing failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

/* p11-kit's pkcs11.h is the 2.40 header: the 3.0 interface type is declared here. */
typedef struct {
    CK_UTF8CHAR *pInterfaceName;
    void *pFunctionList;
    CK_FLAGS flags;
} HP_CK_INTERFACE;
typedef CK_RV (*hp_get_interface_fn)(CK_UTF8CHAR *name, CK_VERSION *version,
                                     HP_CK_INTERFACE **iface, CK_FLAGS flags);
typedef CK_RV (*hp_get_interface_list_fn)(HP_CK_INTERFACE *list, CK_ULONG *count);

#define SO_PIN "so-pin-1234"
#define USER_PIN "user-pin-1234"
#define RSA_LABEL "c-rsa-2048"
#define EC_LABEL "c-ec-p256"

static int passed;
static int failed;
static const char *who = "";

static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    printf("%s%s: ", who, ok ? "PASS" : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (ok)
        passed++;
    else
        failed++;
}

/* Check that a call returned the expected CK_RV. Evaluates to whether it did. */
static int check_rv(CK_RV got, CK_RV want, const char *what)
{
    int ok = got == want;
    if (ok)
        check(1, "%s -> 0x%lx", what, (unsigned long)got);
    else
        check(0, "%s -> 0x%lx, expected 0x%lx", what, (unsigned long)got, (unsigned long)want);
    return ok;
}

static CK_FUNCTION_LIST *f;  /* from C_GetFunctionList (2.40) */
static CK_FUNCTION_LIST *f3; /* from C_GetInterface (3.0); its first members match the 2.40 list */
static CK_SLOT_ID slot;
static CK_C_INITIALIZE_ARGS init_args;

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;

/* DER of the P-256 OID, the CKA_EC_PARAMS of a named curve. */
static CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
/* DigestInfo prefix of SHA-256 (RFC 8017, 9.2 note 1). */
static const CK_BYTE sha256_digest_info[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                             0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                             0x01, 0x05, 0x00, 0x04, 0x20};

static CK_BYTE message[] = "hsmpool C interop test: the quick brown fox jumps over the lazy dog";
#define MESSAGE_LEN (sizeof(message) - 1)

static void pad_label(CK_UTF8CHAR out[32], const char *label)
{
    memset(out, ' ', 32);
    memcpy(out, label, strlen(label));
}

static int gen_rsa(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_ATTRIBUTE pub_t[] = {
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_VERIFY, &yes, sizeof yes},
        {CKA_ENCRYPT, &no, sizeof no},
        {CKA_MODULUS_BITS, &bits, sizeof bits},
        {CKA_PUBLIC_EXPONENT, exponent, sizeof exponent},
        {CKA_LABEL, RSA_LABEL, strlen(RSA_LABEL)},
    };
    CK_ATTRIBUTE priv_t[] = {
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_SIGN, &yes, sizeof yes},
        {CKA_DECRYPT, &no, sizeof no},
        {CKA_LABEL, RSA_LABEL, strlen(RSA_LABEL)},
    };
    CK_RV rv = f->C_GenerateKeyPair(s, &mech, pub_t, sizeof pub_t / sizeof pub_t[0], priv_t,
                                    sizeof priv_t / sizeof priv_t[0], pub, priv);
    return check_rv(rv, CKR_OK, "C_GenerateKeyPair(RSA-2048)");
}

static int gen_ec(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pub_t[] = {
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_VERIFY, &yes, sizeof yes},
        {CKA_EC_PARAMS, p256_params, sizeof p256_params},
        {CKA_LABEL, EC_LABEL, strlen(EC_LABEL)},
    };
    CK_ATTRIBUTE priv_t[] = {
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_SIGN, &yes, sizeof yes},
        {CKA_LABEL, EC_LABEL, strlen(EC_LABEL)},
    };
    CK_RV rv = f->C_GenerateKeyPair(s, &mech, pub_t, sizeof pub_t / sizeof pub_t[0], priv_t,
                                    sizeof priv_t / sizeof priv_t[0], pub, priv);
    return check_rv(rv, CKR_OK, "C_GenerateKeyPair(EC P-256)");
}

/* Find exactly one object of a class with a label; 0 if not found. */
static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof cls},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE found[2] = {0, 0};
    CK_ULONG n = 0;
    char what[96];
    snprintf(what, sizeof what, "find %s (class %lu): C_FindObjectsInit", label, (unsigned long)cls);
    if (!check_rv(f->C_FindObjectsInit(s, t, 2), CKR_OK, what))
        return 0;
    CK_RV rv = f->C_FindObjects(s, found, 2, &n);
    check(rv == CKR_OK && n == 1, "find %s: C_FindObjects -> 0x%lx, %lu object(s) (want 1)", label,
          (unsigned long)rv, (unsigned long)n);
    check_rv(f->C_FindObjectsFinal(s), CKR_OK, "C_FindObjectsFinal");
    return n == 1 ? found[0] : 0;
}

/* Single-part sign with the two-call pattern; returns the signature length (0 on failure). */
static CK_ULONG sign_two_call(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE m, const char *name,
                              CK_OBJECT_HANDLE key, CK_BYTE *data, CK_ULONG data_len,
                              CK_BYTE *sig, CK_ULONG cap, CK_ULONG want_len)
{
    CK_MECHANISM mech = {m, NULL, 0};
    char what[128];
    CK_ULONG len = 0;
    CK_RV rv;

    snprintf(what, sizeof what, "%s: C_SignInit", name);
    if (!check_rv(f->C_SignInit(s, &mech, key), CKR_OK, what))
        return 0;
    rv = f->C_Sign(s, data, data_len, NULL, &len);
    check(rv == CKR_OK && len == want_len,
          "%s: C_Sign(NULL) length query -> 0x%lx, length %lu (want CKR_OK, %lu)", name,
          (unsigned long)rv, (unsigned long)len, (unsigned long)want_len);
    if (rv != CKR_OK || len == 0 || len > cap)
        return 0;
    rv = f->C_Sign(s, data, data_len, sig, &len);
    check(rv == CKR_OK && len == want_len, "%s: C_Sign(buffer) -> 0x%lx, length %lu (want %lu)",
          name, (unsigned long)rv, (unsigned long)len, (unsigned long)want_len);
    if (rv != CKR_OK)
        return 0;
    /* A successful C_Sign with a buffer ends the operation. */
    CK_ULONG again = cap;
    snprintf(what, sizeof what, "%s: C_Sign after the operation ended", name);
    check_rv(f->C_Sign(s, data, data_len, sig + cap, &again), CKR_OPERATION_NOT_INITIALIZED, what);
    return len;
}

static CK_RV verify(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE m, CK_OBJECT_HANDLE key,
                    CK_BYTE *data, CK_ULONG data_len, CK_BYTE *sig, CK_ULONG sig_len)
{
    CK_MECHANISM mech = {m, NULL, 0};
    CK_RV rv = f->C_VerifyInit(s, &mech, key);
    if (rv != CKR_OK)
        return rv;
    return f->C_Verify(s, data, data_len, sig, sig_len);
}

/* The full set of checks for one hash-and-sign mechanism. */
static void sign_verify_suite(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE m, const char *name,
                              CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub, CK_ULONG sig_len,
                              int deterministic)
{
    CK_BYTE sig[1024];
    CK_BYTE sig2[1024];
    CK_BYTE bad[1024];
    char what[160];
    CK_MECHANISM mech = {m, NULL, 0};
    CK_RV rv;

    /* Sign with the two-call pattern (sign_two_call probes past the end at sig + 512), verify. */
    CK_ULONG len = sign_two_call(s, m, name, priv, message, MESSAGE_LEN, sig, 512, sig_len);
    if (len == 0)
        return;
    snprintf(what, sizeof what, "%s: C_Verify of a good signature", name);
    check_rv(verify(s, m, pub, message, MESSAGE_LEN, sig, len), CKR_OK, what);

    /* A corrupted signature (one bit flipped in the middle, and the last byte). */
    memcpy(bad, sig, len);
    bad[len / 2] ^= 0x01;
    snprintf(what, sizeof what, "%s: C_Verify of a signature with a flipped bit", name);
    check_rv(verify(s, m, pub, message, MESSAGE_LEN, bad, len), CKR_SIGNATURE_INVALID, what);
    memcpy(bad, sig, len);
    bad[len - 1] ^= 0x80;
    snprintf(what, sizeof what, "%s: C_Verify of a signature with its last byte changed", name);
    check_rv(verify(s, m, pub, message, MESSAGE_LEN, bad, len), CKR_SIGNATURE_INVALID, what);

    /* The right signature over other data. */
    CK_BYTE other[MESSAGE_LEN];
    memcpy(other, message, MESSAGE_LEN);
    other[0] ^= 0x20;
    snprintf(what, sizeof what, "%s: C_Verify of a signature over other data", name);
    check_rv(verify(s, m, pub, other, MESSAGE_LEN, sig, len), CKR_SIGNATURE_INVALID, what);

    /* A signature of the wrong length: invalid purely on the basis of its length. */
    snprintf(what, sizeof what, "%s: C_Verify of a truncated signature", name);
    check_rv(verify(s, m, pub, message, MESSAGE_LEN, sig, len - 1), CKR_SIGNATURE_LEN_RANGE, what);

    /* CKR_BUFFER_TOO_SMALL: the needed length is written back, the operation stays active. */
    snprintf(what, sizeof what, "%s: C_SignInit (short buffer test)", name);
    if (check_rv(f->C_SignInit(s, &mech, priv), CKR_OK, what)) {
        CK_ULONG small = 8;
        rv = f->C_Sign(s, message, MESSAGE_LEN, sig2, &small);
        check(rv == CKR_BUFFER_TOO_SMALL && small == sig_len,
              "%s: C_Sign with an 8-byte buffer -> 0x%lx, length %lu (want "
              "CKR_BUFFER_TOO_SMALL, %lu)",
              name, (unsigned long)rv, (unsigned long)small, (unsigned long)sig_len);
        CK_ULONG big = sizeof sig2;
        rv = f->C_Sign(s, message, MESSAGE_LEN, sig2, &big);
        check(rv == CKR_OK && big == sig_len,
              "%s: C_Sign after CKR_BUFFER_TOO_SMALL (operation still active) -> 0x%lx, "
              "length %lu",
              name, (unsigned long)rv, (unsigned long)big);
        if (rv == CKR_OK) {
            snprintf(what, sizeof what, "%s: C_Verify of the signature made after a short buffer",
                     name);
            check_rv(verify(s, m, pub, message, MESSAGE_LEN, sig2, big), CKR_OK, what);
            if (deterministic)
                check(big == len && memcmp(sig, sig2, len) == 0,
                      "%s: deterministic signature is the same twice", name);
        }
    }

    /* Multi-part: C_SignUpdate x2, C_SignFinal with the two-call pattern; C_VerifyUpdate. */
    snprintf(what, sizeof what, "%s: C_SignInit (multi-part)", name);
    if (check_rv(f->C_SignInit(s, &mech, priv), CKR_OK, what)) {
        CK_ULONG half = MESSAGE_LEN / 2;
        check_rv(f->C_SignUpdate(s, message, half), CKR_OK, "C_SignUpdate (1/2)");
        check_rv(f->C_SignUpdate(s, message + half, MESSAGE_LEN - half), CKR_OK,
                 "C_SignUpdate (2/2)");
        CK_ULONG flen = 0;
        rv = f->C_SignFinal(s, NULL, &flen);
        check(rv == CKR_OK && flen == sig_len,
              "%s: C_SignFinal(NULL) length query -> 0x%lx, length %lu", name, (unsigned long)rv,
              (unsigned long)flen);
        flen = 4;
        rv = f->C_SignFinal(s, sig2, &flen);
        check(rv == CKR_BUFFER_TOO_SMALL && flen == sig_len,
              "%s: C_SignFinal with a 4-byte buffer -> 0x%lx, length %lu", name, (unsigned long)rv,
              (unsigned long)flen);
        flen = sizeof sig2;
        rv = f->C_SignFinal(s, sig2, &flen);
        check(rv == CKR_OK && flen == sig_len, "%s: C_SignFinal(buffer) -> 0x%lx, length %lu",
              name, (unsigned long)rv, (unsigned long)flen);
        if (rv == CKR_OK) {
            if (deterministic)
                check(flen == len && memcmp(sig, sig2, len) == 0,
                      "%s: multi-part signature equals the single-part one", name);
            snprintf(what, sizeof what, "%s: C_VerifyInit (multi-part)", name);
            if (check_rv(f->C_VerifyInit(s, &mech, pub), CKR_OK, what)) {
                check_rv(f->C_VerifyUpdate(s, message, 10), CKR_OK, "C_VerifyUpdate (1/2)");
                check_rv(f->C_VerifyUpdate(s, message + 10, MESSAGE_LEN - 10), CKR_OK,
                         "C_VerifyUpdate (2/2)");
                snprintf(what, sizeof what, "%s: C_VerifyFinal of the multi-part signature", name);
                check_rv(f->C_VerifyFinal(s, sig2, flen), CKR_OK, what);
            }
            /* The multi-part signature verifies single-part too. */
            snprintf(what, sizeof what, "%s: single-part C_Verify of the multi-part signature",
                     name);
            check_rv(verify(s, m, pub, message, MESSAGE_LEN, sig2, flen), CKR_OK, what);
        }
    }
}

/* SHA-256 of the message through C_Digest (two-call). */
static int digest_sha256(CK_SESSION_HANDLE s, CK_BYTE out[32])
{
    CK_MECHANISM mech = {CKM_SHA256, NULL, 0};
    CK_ULONG len = 0;
    if (!check_rv(f->C_DigestInit(s, &mech), CKR_OK, "C_DigestInit(SHA256)"))
        return 0;
    CK_RV rv = f->C_Digest(s, message, MESSAGE_LEN, NULL, &len);
    check(rv == CKR_OK && len == 32, "C_Digest(NULL) length query -> 0x%lx, length %lu",
          (unsigned long)rv, (unsigned long)len);
    rv = f->C_Digest(s, message, MESSAGE_LEN, out, &len);
    check(rv == CKR_OK && len == 32, "C_Digest -> 0x%lx, length %lu", (unsigned long)rv,
          (unsigned long)len);
    return rv == CKR_OK && len == 32;
}

/* The hash-and-sign mechanisms agree with the raw ones over a digest. */
static void cross_checks(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE rsa_priv, CK_OBJECT_HANDLE rsa_pub,
                         CK_OBJECT_HANDLE ec_priv, CK_OBJECT_HANDLE ec_pub)
{
    CK_BYTE digest[32];
    CK_BYTE sig[1024];
    if (!digest_sha256(s, digest))
        return;

    if (rsa_priv) {
        CK_BYTE di[sizeof sha256_digest_info + 32];
        memcpy(di, sha256_digest_info, sizeof sha256_digest_info);
        memcpy(di + sizeof sha256_digest_info, digest, 32);
        /* Sign with SHA256_RSA_PKCS, verify with raw RSA_PKCS over the DigestInfo. */
        CK_ULONG len = sign_two_call(s, CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS (cross)",
                                     rsa_priv, message, MESSAGE_LEN, sig, 512, 256);
        if (len)
            check_rv(verify(s, CKM_RSA_PKCS, rsa_pub, di, sizeof di, sig, len), CKR_OK,
                     "CKM_RSA_PKCS C_Verify over the DigestInfo of a CKM_SHA256_RSA_PKCS signature");
        /* And the other way. */
        len = sign_two_call(s, CKM_RSA_PKCS, "CKM_RSA_PKCS over a DigestInfo", rsa_priv, di,
                            sizeof di, sig, 512, 256);
        if (len)
            check_rv(verify(s, CKM_SHA256_RSA_PKCS, rsa_pub, message, MESSAGE_LEN, sig, len),
                     CKR_OK, "CKM_SHA256_RSA_PKCS C_Verify of a raw CKM_RSA_PKCS signature");
    }
    if (ec_priv) {
        CK_ULONG len = sign_two_call(s, CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256 (cross)", ec_priv,
                                     message, MESSAGE_LEN, sig, 512, 64);
        if (len)
            check_rv(verify(s, CKM_ECDSA, ec_pub, digest, 32, sig, len), CKR_OK,
                     "CKM_ECDSA C_Verify over the digest of a CKM_ECDSA_SHA256 signature");
        len = sign_two_call(s, CKM_ECDSA, "CKM_ECDSA over a digest", ec_priv, digest, 32, sig,
                            512, 64);
        if (len)
            check_rv(verify(s, CKM_ECDSA_SHA256, ec_pub, message, MESSAGE_LEN, sig, len), CKR_OK,
                     "CKM_ECDSA_SHA256 C_Verify of a raw CKM_ECDSA signature");
    }
}

/* Attribute checks, including the two-call pattern for C_GetAttributeValue. */
static void attribute_checks(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE rsa_pub,
                             CK_OBJECT_HANDLE rsa_priv, CK_OBJECT_HANDLE ec_pub)
{
    CK_RV rv;
    if (rsa_pub) {
        CK_ATTRIBUTE a = {CKA_MODULUS, NULL, 0};
        rv = f->C_GetAttributeValue(s, rsa_pub, &a, 1);
        check(rv == CKR_OK && a.ulValueLen == 256,
              "C_GetAttributeValue(CKA_MODULUS, NULL) -> 0x%lx, length %lu (want 256)",
              (unsigned long)rv, (unsigned long)a.ulValueLen);
        CK_BYTE modulus[512];
        a.pValue = modulus;
        a.ulValueLen = sizeof modulus;
        rv = f->C_GetAttributeValue(s, rsa_pub, &a, 1);
        check(rv == CKR_OK && a.ulValueLen == 256 && (modulus[0] & 0x80),
              "C_GetAttributeValue(CKA_MODULUS) -> 0x%lx, length %lu, top bit set",
              (unsigned long)rv, (unsigned long)a.ulValueLen);
        a.ulValueLen = 3;
        rv = f->C_GetAttributeValue(s, rsa_pub, &a, 1);
        check(rv == CKR_BUFFER_TOO_SMALL && a.ulValueLen == CK_UNAVAILABLE_INFORMATION,
              "C_GetAttributeValue(CKA_MODULUS, 3-byte buffer) -> 0x%lx, length 0x%lx (want "
              "CKR_BUFFER_TOO_SMALL, CK_UNAVAILABLE_INFORMATION)",
              (unsigned long)rv, (unsigned long)a.ulValueLen);
    }
    if (rsa_priv) {
        CK_BYTE buf[1024];
        CK_ATTRIBUTE a = {CKA_PRIVATE_EXPONENT, buf, sizeof buf};
        rv = f->C_GetAttributeValue(s, rsa_priv, &a, 1);
        check(rv == CKR_ATTRIBUTE_SENSITIVE && a.ulValueLen == CK_UNAVAILABLE_INFORMATION,
              "C_GetAttributeValue(CKA_PRIVATE_EXPONENT) of a sensitive key -> 0x%lx, length "
              "0x%lx",
              (unsigned long)rv, (unsigned long)a.ulValueLen);
    }
    if (ec_pub) {
        CK_ATTRIBUTE a[2] = {{CKA_EC_PARAMS, NULL, 0}, {CKA_EC_POINT, NULL, 0}};
        rv = f->C_GetAttributeValue(s, ec_pub, a, 2);
        /* The EC point is a DER OCTET STRING of the 65-byte uncompressed point. */
        check(rv == CKR_OK && a[0].ulValueLen == sizeof p256_params && a[1].ulValueLen == 67,
              "C_GetAttributeValue(CKA_EC_PARAMS, CKA_EC_POINT, NULL) -> 0x%lx, lengths %lu, %lu "
              "(want 10, 67)",
              (unsigned long)rv, (unsigned long)a[0].ulValueLen, (unsigned long)a[1].ulValueLen);
        CK_BYTE params[64];
        CK_BYTE point[128];
        a[0].pValue = params;
        a[0].ulValueLen = sizeof params;
        a[1].pValue = point;
        a[1].ulValueLen = sizeof point;
        rv = f->C_GetAttributeValue(s, ec_pub, a, 2);
        check(rv == CKR_OK && a[0].ulValueLen == sizeof p256_params &&
                  memcmp(params, p256_params, sizeof p256_params) == 0 && a[1].ulValueLen == 67 &&
                  point[0] == 0x04 && point[1] == 65 && point[2] == 0x04,
              "C_GetAttributeValue(CKA_EC_PARAMS, CKA_EC_POINT) -> 0x%lx, P-256 OID, DER "
              "uncompressed point",
              (unsigned long)rv);
    }
}

static CK_RV login_user(CK_SESSION_HANDLE s)
{
    return f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)USER_PIN, strlen(USER_PIN));
}

/* What the child does after fork(). Returns the exit status. */
static int child_after_fork(CK_SESSION_HANDLE parent_session, int with_rsa)
{
    CK_SESSION_INFO info;
    CK_SESSION_HANDLE s = 0;
    CK_BYTE sig[1024];

    who = "[child] ";
    passed = 0;
    failed = 0;
    check_rv(f->C_GetSessionInfo(parent_session, &info), CKR_CRYPTOKI_NOT_INITIALIZED,
             "C_GetSessionInfo in the child before C_Initialize");
    if (!check_rv(f->C_Initialize(&init_args), CKR_OK, "C_Initialize in the child"))
        goto out;
    check_rv(f->C_GetSessionInfo(parent_session, &info), CKR_SESSION_HANDLE_INVALID,
             "C_GetSessionInfo(the parent's session) after C_Initialize in the child");
    if (!check_rv(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
                  CKR_OK, "C_OpenSession in the child"))
        goto fin;
    if (!check_rv(login_user(s), CKR_OK, "C_Login(CKU_USER) in the child"))
        goto fin;
    CK_OBJECT_HANDLE ec_priv = find_key(s, CKO_PRIVATE_KEY, EC_LABEL);
    CK_OBJECT_HANDLE ec_pub = find_key(s, CKO_PUBLIC_KEY, EC_LABEL);
    if (ec_priv && ec_pub) {
        CK_ULONG len = sign_two_call(s, CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256 in the child", ec_priv,
                                     message, MESSAGE_LEN, sig, 512, 64);
        if (len)
            check_rv(verify(s, CKM_ECDSA_SHA256, ec_pub, message, MESSAGE_LEN, sig, len), CKR_OK,
                     "C_Verify(CKM_ECDSA_SHA256) in the child");
    }
    if (with_rsa) {
        CK_OBJECT_HANDLE rsa_priv = find_key(s, CKO_PRIVATE_KEY, RSA_LABEL);
        CK_OBJECT_HANDLE rsa_pub = find_key(s, CKO_PUBLIC_KEY, RSA_LABEL);
        if (rsa_priv && rsa_pub) {
            CK_ULONG len = sign_two_call(s, CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS in the child",
                                         rsa_priv, message, MESSAGE_LEN, sig, 512, 256);
            if (len)
                check_rv(verify(s, CKM_SHA256_RSA_PKCS, rsa_pub, message, MESSAGE_LEN, sig, len),
                         CKR_OK, "C_Verify(CKM_SHA256_RSA_PKCS) in the child");
        }
    }
    check_rv(f->C_CloseSession(s), CKR_OK, "C_CloseSession in the child");
fin:
    check_rv(f->C_Finalize(NULL), CKR_OK, "C_Finalize in the child");
out:
    printf("[child] %d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed == 0 && passed > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s <module.so> [full|ec]\n", argv[0]);
        return 2;
    }
    int with_rsa = 1;
    CK_SESSION_HANDLE s = 0;
    if (argc == 3) {
        if (strcmp(argv[2], "ec") == 0)
            with_rsa = 0;
        else if (strcmp(argv[2], "full") != 0) {
            fprintf(stderr, "unknown mode %s (full|ec)\n", argv[2]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* C_InitToken wipes the token: never run against the default data directory by accident. */
    const char *conf = getenv("HSMPOOL_CONF");
    if (!conf || !*conf) {
        fprintf(stderr, "HSMPOOL_CONF must name the configuration of a scratch token\n");
        return 2;
    }

    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 2;
    }

    /* Both entry points. */
    hp_get_interface_fn get_interface = (hp_get_interface_fn)dlsym(lib, "C_GetInterface");
    hp_get_interface_list_fn get_interface_list =
        (hp_get_interface_list_fn)dlsym(lib, "C_GetInterfaceList");
    CK_C_GetFunctionList get_function_list = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    check(get_interface != NULL, "dlsym(C_GetInterface)");
    check(get_interface_list != NULL, "dlsym(C_GetInterfaceList)");
    check(get_function_list != NULL, "dlsym(C_GetFunctionList)");
    if (!get_interface || !get_function_list)
        goto summary;

    if (get_interface_list) {
        CK_ULONG count = 0;
        CK_RV rv = get_interface_list(NULL, &count);
        check(rv == CKR_OK && count >= 1, "C_GetInterfaceList(NULL) -> 0x%lx, %lu interface(s)",
              (unsigned long)rv, (unsigned long)count);
        if (rv == CKR_OK && count >= 1 && count < 16) {
            HP_CK_INTERFACE list[16];
            rv = get_interface_list(list, &count);
            check_rv(rv, CKR_OK, "C_GetInterfaceList(buffer)");
            for (CK_ULONG i = 0; rv == CKR_OK && i < count; i++) {
                CK_VERSION *v = (CK_VERSION *)list[i].pFunctionList;
                printf("  interface %lu: \"%s\" version %u.%u flags 0x%lx\n", (unsigned long)i,
                       list[i].pInterfaceName ? (const char *)list[i].pInterfaceName : "(null)",
                       v ? v->major : 0, v ? v->minor : 0, (unsigned long)list[i].flags);
            }
        }
    }

    HP_CK_INTERFACE *iface = NULL;
    CK_RV rv = get_interface(NULL, NULL, &iface, 0);
    if (!check_rv(rv, CKR_OK, "C_GetInterface(NULL, NULL) (the default interface)") || !iface)
        goto summary;
    f3 = (CK_FUNCTION_LIST *)iface->pFunctionList;
    check(iface->pInterfaceName && strcmp((const char *)iface->pInterfaceName, "PKCS 11") == 0,
          "the default interface is named \"PKCS 11\" (got \"%s\")",
          iface->pInterfaceName ? (const char *)iface->pInterfaceName : "(null)");
    check(f3 && f3->version.major == 3, "the default interface is version 3.x (got %u.%u)",
          f3 ? f3->version.major : 0, f3 ? f3->version.minor : 0);
    {
        CK_VERSION v30 = {3, 0};
        HP_CK_INTERFACE *named = NULL;
        rv = get_interface((CK_UTF8CHAR *)"PKCS 11", &v30, &named, 0);
        check(rv == CKR_OK && named && named->pFunctionList == iface->pFunctionList,
              "C_GetInterface(\"PKCS 11\", 3.0) -> 0x%lx, the same list", (unsigned long)rv);
        HP_CK_INTERFACE *unknown = NULL;
        rv = get_interface((CK_UTF8CHAR *)"No Such Interface", NULL, &unknown, 0);
        check_rv(rv, CKR_ARGUMENTS_BAD, "C_GetInterface(\"No Such Interface\")");
    }

    rv = get_function_list(&f);
    if (!check_rv(rv, CKR_OK, "C_GetFunctionList") || !f)
        goto summary;
    check(f->version.major == 2 || f->version.major == 3,
          "C_GetFunctionList version is 2.x or 3.x (got %u.%u)", f->version.major,
          f->version.minor);
    check(f->C_Initialize && f->C_Sign && f->C_Verify && f->C_GenerateKeyPair &&
              f->C_WaitForSlotEvent && f3->C_Initialize && f3->C_WaitForSlotEvent,
          "the function lists are filled");

    /* Before C_Initialize. */
    {
        CK_SESSION_INFO info;
        check_rv(f->C_GetSessionInfo(1, &info), CKR_CRYPTOKI_NOT_INITIALIZED,
                 "C_GetSessionInfo before C_Initialize");
    }

    /* Initialise through the 3.0 list; use the 2.40 list for the rest (one module state). */
    memset(&init_args, 0, sizeof init_args);
    init_args.flags = CKF_OS_LOCKING_OK;
    if (!check_rv(f3->C_Initialize(&init_args), CKR_OK, "C_Initialize (3.0 list, OS locking)"))
        goto summary;
    check_rv(f->C_Initialize(&init_args), CKR_CRYPTOKI_ALREADY_INITIALIZED,
             "C_Initialize again (2.40 list)");
    {
        CK_INFO info;
        rv = f->C_GetInfo(&info);
        check(rv == CKR_OK && info.cryptokiVersion.major >= 2, "C_GetInfo -> 0x%lx, Cryptoki %u.%u",
              (unsigned long)rv, info.cryptokiVersion.major, info.cryptokiVersion.minor);
    }

    CK_ULONG nslots = 0;
    rv = f->C_GetSlotList(CK_TRUE, NULL, &nslots);
    check(rv == CKR_OK && nslots >= 1, "C_GetSlotList(NULL) -> 0x%lx, %lu slot(s)",
          (unsigned long)rv, (unsigned long)nslots);
    if (rv != CKR_OK || nslots < 1 || nslots > 16)
        goto finalize;
    {
        CK_SLOT_ID slots[16];
        rv = f->C_GetSlotList(CK_TRUE, slots, &nslots);
        if (!check_rv(rv, CKR_OK, "C_GetSlotList(buffer)"))
            goto finalize;
        slot = slots[0];
    }

    /* A fresh token: SO PIN, label, user PIN. */
    {
        CK_UTF8CHAR label[32];
        pad_label(label, "c-interop");
        if (!check_rv(f->C_InitToken(slot, (CK_UTF8CHAR *)SO_PIN, strlen(SO_PIN), label), CKR_OK,
                      "C_InitToken"))
            goto finalize;
        CK_TOKEN_INFO ti;
        rv = f->C_GetTokenInfo(slot, &ti);
        check(rv == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) &&
                  memcmp(ti.label, label, 32) == 0,
              "C_GetTokenInfo after C_InitToken -> 0x%lx, initialised, label set",
              (unsigned long)rv);
    }

    if (!check_rv(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
                  CKR_OK, "C_OpenSession(R/W)"))
        goto finalize;
    if (!check_rv(f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)SO_PIN, strlen(SO_PIN)), CKR_OK,
                  "C_Login(CKU_SO)"))
        goto finalize;
    if (!check_rv(f->C_InitPIN(s, (CK_UTF8CHAR *)USER_PIN, strlen(USER_PIN)), CKR_OK, "C_InitPIN"))
        goto finalize;
    check_rv(f->C_Logout(s), CKR_OK, "C_Logout(SO)");
    check_rv(f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)"wrong-pin", 9), CKR_PIN_INCORRECT,
             "C_Login(CKU_USER) with a wrong PIN");
    if (!check_rv(login_user(s), CKR_OK, "C_Login(CKU_USER)"))
        goto finalize;
    {
        CK_SESSION_INFO info;
        rv = f->C_GetSessionInfo(s, &info);
        check(rv == CKR_OK && info.state == CKS_RW_USER_FUNCTIONS,
              "C_GetSessionInfo -> 0x%lx, state %lu (want CKS_RW_USER_FUNCTIONS)",
              (unsigned long)rv, (unsigned long)info.state);
    }

    CK_OBJECT_HANDLE rsa_pub = 0, rsa_priv = 0, ec_pub = 0, ec_priv = 0;
    if (with_rsa && gen_rsa(s, &rsa_pub, &rsa_priv))
        sign_verify_suite(s, CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS", rsa_priv, rsa_pub, 256,
                          1);
    if (gen_ec(s, &ec_pub, &ec_priv))
        sign_verify_suite(s, CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256", ec_priv, ec_pub, 64, 0);
    cross_checks(s, rsa_priv, rsa_pub, ec_priv, ec_pub);
    attribute_checks(s, rsa_pub, rsa_priv, ec_pub);

    /* A key of the wrong type for the mechanism. */
    if (ec_priv && with_rsa) {
        CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
        check_rv(f->C_SignInit(s, &m, ec_priv), CKR_KEY_TYPE_INCONSISTENT,
                 "C_SignInit(CKM_SHA256_RSA_PKCS) with an EC key");
    }

    /* fork(): the child must re-initialise; the parent keeps working. */
    if (ec_priv) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            int status = child_after_fork(s, with_rsa && rsa_priv);
            _exit(status);
        }
        check(pid > 0, "fork()");
        if (pid > 0) {
            int status = 0;
            pid_t w = waitpid(pid, &status, 0);
            check(w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the child exited with status 0 (wait status 0x%x%s)", (unsigned)status,
                  WIFSIGNALED(status) ? ", killed by a signal" : "");
            CK_BYTE sig[1024];
            CK_ULONG len = sign_two_call(s, CKM_ECDSA_SHA256, "parent after fork: CKM_ECDSA_SHA256",
                                         ec_priv, message, MESSAGE_LEN, sig, 512, 64);
            if (len)
                check_rv(verify(s, CKM_ECDSA_SHA256, ec_pub, message, MESSAGE_LEN, sig, len),
                         CKR_OK, "parent after fork: C_Verify(CKM_ECDSA_SHA256)");
            if (rsa_priv) {
                len = sign_two_call(s, CKM_SHA256_RSA_PKCS,
                                    "parent after fork: CKM_SHA256_RSA_PKCS", rsa_priv, message,
                                    MESSAGE_LEN, sig, 512, 256);
                if (len)
                    check_rv(verify(s, CKM_SHA256_RSA_PKCS, rsa_pub, message, MESSAGE_LEN, sig,
                                    len),
                             CKR_OK, "parent after fork: C_Verify(CKM_SHA256_RSA_PKCS)");
            }
            CK_SESSION_INFO info;
            rv = f->C_GetSessionInfo(s, &info);
            check(rv == CKR_OK && info.state == CKS_RW_USER_FUNCTIONS,
                  "parent after fork: still logged in (0x%lx, state %lu)", (unsigned long)rv,
                  (unsigned long)info.state);
        }
    }

    check_rv(f->C_Logout(s), CKR_OK, "C_Logout");
    check_rv(f->C_CloseSession(s), CKR_OK, "C_CloseSession");
finalize:
    check_rv(f->C_Finalize(NULL), CKR_OK, "C_Finalize");
    {
        CK_SESSION_INFO info;
        check_rv(f->C_GetSessionInfo(s, &info), CKR_CRYPTOKI_NOT_INITIALIZED,
                 "C_GetSessionInfo after C_Finalize");
    }
summary:
    dlclose(lib);
    printf("sign_verify: %d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
