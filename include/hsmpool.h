/*
 * hsmpool.h: hsmpool's vendor extensions to PKCS #11, and nothing else.
 *
 * Standard PKCS #11 declarations come from your pkcs11.h (for example p11-kit's,
 * <p11-kit/pkcs11.h>); this header only adds what is specific to libhsmpool_pkcs11.so.
 * The C calling contract (NULLs, buffers, threads, fork) is in cdylib/README.md.
 */
#ifndef HSMPOOL_H
#define HSMPOOL_H

/*
 * C_Initialize configuration string.
 *
 * Pass a NUL-terminated string starting with this prefix as CK_C_INITIALIZE_ARGS.pReserved;
 * the rest of the string goes to the engine's configuration, for example:
 *
 *     CK_C_INITIALIZE_ARGS args = { 0 };
 *     args.flags = CKF_OS_LOCKING_OK;
 *     args.pReserved = (CK_VOID_PTR)HSMPOOL_CONFIG_PREFIX "conf=/etc/hsmpool/hsmpool.toml";
 *     rv = C_Initialize(&args);
 *
 * Any other non-NULL pReserved is refused with CKR_ARGUMENTS_BAD. At most 4096 bytes, NUL
 * included, are read; the rest must be UTF-8.
 */
#define HSMPOOL_CONFIG_PREFIX "hsmpool:"

/*
 * Vendor-defined attribute: the cluster-wide object id the engine gives a new object on every
 * member (also the idempotency token of a create). The engine sets it; an application template
 * naming it is refused with CKR_ATTRIBUTE_TYPE_INVALID. CKA_UNIQUE_ID shows the same id in hex.
 */
#define CKA_HSMPOOL_OBJECT_ID (CKA_VENDOR_DEFINED | 0x48500001UL)

/*
 * Vendor-defined attribute, read-only: the crypto users the key's owner shared it with, their
 * names separated by '\n' (absent when shared with none). Set with HSMPOOL_ShareKey (or
 * `hsmpool key share`); a template naming it is refused with CKR_ATTRIBUTE_READ_ONLY.
 */
#define CKA_HSMPOOL_SHARED_WITH (CKA_VENDOR_DEFINED | 0x48500002UL)

/*
 * Vendor-defined attributes, read-only, CK_ULONG: the approvals using (CKA_HSMPOOL_QUORUM_USE)
 * and managing (CKA_HSMPOOL_QUORUM_MANAGE: destroy, copy, set attributes, wrap it out, share,
 * unshare) the key needs, from the crypto users associated with it (its owner and the users it
 * is shared with); 1 when absent. Set by the owner with `hsmpool key set-quorum`. A key whose
 * value is above 1 is refused with CKR_HSMPOOL_QUORUM_REQUIRED (at C_SignInit and the other
 * *Init functions, or at the management call) until its user presents M signatures of a quorum
 * token with `hsmpool key approve`; the approval lasts until the token expires (ten minutes).
 */
#define CKA_HSMPOOL_QUORUM_USE (CKA_VENDOR_DEFINED | 0x48500003UL)
#define CKA_HSMPOOL_QUORUM_MANAGE (CKA_VENDOR_DEFINED | 0x48500004UL)

/*
 * Vendor-defined return values of user administration (the `hsmpool user` commands and the
 * engine's user changes; only CKR_HSMPOOL_QUORUM_REQUIRED is returned by standard C_*
 * functions, for a key with its own quorum):
 *
 * CKR_HSMPOOL_USER_EXISTS      a user of that name exists already
 * CKR_HSMPOOL_USER_NOT_FOUND   no user of that name (or it was deleted)
 * CKR_HSMPOOL_LAST_OFFICER     the change would delete, lock or demote the officer making it,
 *                              or the last officer that can log in
 * CKR_HSMPOOL_USER_OWNS_KEYS   the user still owns token keys (`hsmpool user delete --force`
 *                              deletes it anyway; those keys then belong to no one)
 * CKR_HSMPOOL_QUORUM_REQUIRED  the change needs M approvals of distinct officers (`hsmpool
 *                              quorum`) and has fewer valid ones; or the key has a quorum
 *                              (CKA_HSMPOOL_QUORUM_USE/_MANAGE) and the user holds no
 *                              approval in force for it (`hsmpool key approve`); also
 *                              returned by C_*Init, C_DestroyObject, C_SetAttributeValue,
 *                              C_CopyObject and C_WrapKey for such a key
 * CKR_HSMPOOL_QUORUM_TOKEN_INVALID  the quorum token is for another change, or already used
 * CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED  the quorum token is older than ten minutes
 * CKR_HSMPOOL_QUORUM_TOO_HIGH  a key's quorum value would exceed the users associated with it
 *                              (its owner and those it is shared with), or an unshare would
 *                              leave fewer of them than it
 */
#define CKR_HSMPOOL_USER_EXISTS (CKR_VENDOR_DEFINED | 0x48500001UL)
#define CKR_HSMPOOL_USER_NOT_FOUND (CKR_VENDOR_DEFINED | 0x48500002UL)
#define CKR_HSMPOOL_LAST_OFFICER (CKR_VENDOR_DEFINED | 0x48500003UL)
#define CKR_HSMPOOL_USER_OWNS_KEYS (CKR_VENDOR_DEFINED | 0x48500004UL)
#define CKR_HSMPOOL_QUORUM_REQUIRED (CKR_VENDOR_DEFINED | 0x48500005UL)
#define CKR_HSMPOOL_QUORUM_TOKEN_INVALID (CKR_VENDOR_DEFINED | 0x48500006UL)
#define CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED (CKR_VENDOR_DEFINED | 0x48500007UL)
#define CKR_HSMPOOL_QUORUM_TOO_HIGH (CKR_VENDOR_DEFINED | 0x48500008UL)

/*
 * AWS CloudHSM compatibility: the vendor mechanisms of CloudHSM's PKCS #11 library (Client SDK 5,
 * cloudhsm_pkcs11_vendor_defs.h), with CloudHSM's values, so programs written for CloudHSM build
 * and run unchanged. Guarded so that CloudHSM's own header may be included as well.
 *
 * CKM_CLOUDHSM_AES_GCM: AES-GCM whose 12-byte IV the token makes. CK_GCM_PARAMS.pIv must be NULL
 *   (ulIvLen 0 or 12); C_Encrypt returns IV || ciphertext || tag, C_Decrypt takes the same.
 *   Single-part only.
 * CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD: RFC 3394 of the key bytes (a multiple of 8, 16 or more).
 * CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD: RFC 3394 of the key bytes after PKCS #5 padding to 8.
 * CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD: RFC 5649 (zero padding, length in the IV); no IV parameter.
 *   The first two take no parameter or the 8-byte default IV A6A6A6A6A6A6A6A6. Private keys are
 *   wrapped as PKCS #8 PrivateKeyInfo, secret keys as their value.
 * CKM_CLOUDHSM_SP800_108_COUNTER_KDF: NIST SP 800-108 counter mode with HMAC (SHA-1, SHA-2) or
 *   AES-CMAC as the PRF; the parameter is CloudHSM's CK_SP800_108_KDF_PARAMS (see below).
 */
#ifndef CKM_CLOUDHSM_AES_GCM
#define CKM_CLOUDHSM_SP800_108_COUNTER_KDF 0x80000001UL
#define CKM_CLOUDHSM_AES_GCM 0x80001087UL
#define CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD 0x80002109UL
#define CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD 0x8000210AUL
#define CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD 0x8000216FUL

/*
 * The KDF's parameter is CloudHSM's own, declared by CloudHSM's header (not repeated here, since
 * PKCS #11 3.0 headers such as p11-kit's declare different structs under the same names):
 *
 *   struct CK_SP800_108_KDF_PARAMS { CK_MECHANISM_TYPE prftype; CK_ULONG ulNumberOfDataParams;
 *                                    CK_PRF_DATA_PARAM *pDataParams; }
 *   struct CK_PRF_DATA_PARAM { CK_ULONG type; CK_VOID_PTR pValue; CK_ULONG ulValueLen; }
 *
 * prftype: CKM_SHA_1_HMAC .. CKM_SHA512_HMAC, or CKM_AES_CMAC. Data parameter types, Client SDK 5
 * (placed in the PRF input in the order given): 1 the counter (pValue a CK_ULONG width, 16 or 32
 * bits), 2 L (pValue { CK_ULONG dkmLengthMethod; CK_ULONG ulWidthInBits }, method 1 = the key's
 * length, 2 = all PRF blocks' length; width 8, 16, 32 or 64), 3 bytes (label and/or context).
 * Client SDK 3's types 4 (counter), 5 (label), 6 (context), 7 (L) are laid out as
 * counter || label || 0x00 || context || L. Both big-endian.
 */
#endif /* CKM_CLOUDHSM_AES_GCM */

/*
 * Cluster status. Exported by libhsmpool_pkcs11.so (look them up with dlsym); they follow the
 * PKCS #11 rules: CKR_CRYPTOKI_NOT_INITIALIZED before C_Initialize, CKR_SLOT_ID_INVALID for a
 * slot other than 0, CKR_ARGUMENTS_BAD for a NULL pointer, and the list-length rule of
 * PKCS #11 section 5.2 (pStats NULL: *pulCount gets the number of members; too small:
 * CKR_BUFFER_TOO_SMALL and the number in *pulCount).
 */
#define HSMPOOL_MEMBER_UP 0UL      /* taking traffic */
#define HSMPOOL_MEMBER_DOWN 1UL    /* circuit open or unreachable */
#define HSMPOOL_MEMBER_SYNCING 2UL /* answering again, being brought level first */
#define HSMPOOL_MEMBER_DRAINED 3UL /* healthy, receives replication, no balanced traffic */
#define HSMPOOL_MEMBER_REFUSED 4UL /* its token refused the login (wrong or locked PIN): out
                                      until the application logs in again */
#define HSMPOOL_LATENCY_BUCKETS 24

typedef struct HSMPOOL_MEMBER_STATS {
    CK_ULONG index;         /* position in the configuration */
    CK_ULONG health;        /* HSMPOOL_MEMBER_* */
    CK_ULONG epoch;         /* session-pool re-establishments (restarts seen) */
    CK_ULONG in_flight;     /* calls in flight now */
    CK_ULONG pool_sessions; /* member sessions in its pool */
    CK_ULONG ops;           /* calls that succeeded there */
    CK_ULONG errors;        /* calls that failed there (then retried, moved or returned) */
    CK_ULONG retries;       /* retries after a failure there */
    CK_ULONG failovers;     /* calls moved to another member after failing there */
    CK_ULONG reauths;       /* re-authentications of its pool */
    CK_ULONG replicated;    /* objects copied to it (replication, resynchronisation) */
    CK_ULONG dropped;       /* objects removed from it (resynchronisation, roll-back) */
    CK_ULONG latency[HSMPOOL_LATENCY_BUCKETS]; /* latency[i]: sampled calls (one in eight) under 2^i microseconds */
} HSMPOOL_MEMBER_STATS;

/* Every member's status and counters since C_Initialize. */
CK_RV HSMPOOL_GetMemberStats(CK_SLOT_ID slotID, HSMPOOL_MEMBER_STATS *pStats,
                             CK_ULONG_PTR pulCount);
/* Finds and C_*Init key checks answered from the engine's caches, without a round trip. */
CK_RV HSMPOOL_GetCacheStats(CK_ULONG_PTR pulFindHits, CK_ULONG_PTR pulKeyHits);
/* Take a member out of the balancing (CK_TRUE) or put it back (CK_FALSE). */
CK_RV HSMPOOL_DrainMember(CK_SLOT_ID slotID, CK_ULONG member, CK_BBOOL drained);

/*
 * Key ownership (CloudHSM's rules). The crypto user who makes a key owns it. Its owner, logged
 * in on a read-write session, shares token key hKey with the crypto user pUser (UTF-8,
 * ulUserLen bytes; share CK_TRUE) or stops (CK_FALSE), on every member. A user a key is shared
 * with may use it as its attributes allow, but not destroy, change, copy, wrap or share it
 * (CKR_ACTION_PROHIBITED); another user's key not shared with you does not exist for you.
 * Returns CKR_USER_NOT_LOGGED_IN unless a crypto user is logged in, CKR_SESSION_READ_ONLY,
 * CKR_OBJECT_HANDLE_INVALID, CKR_ACTION_PROHIBITED (not the owner, a session object, or pUser
 * is the owner), CKR_HSMPOOL_USER_NOT_FOUND (no such crypto user), CKR_FUNCTION_NOT_SUPPORTED
 * (a member is a vendor token, which keeps no users of ours).
 */
CK_RV HSMPOOL_ShareKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey, CK_UTF8CHAR_PTR pUser,
                       CK_ULONG ulUserLen, CK_BBOOL share);

#endif /* HSMPOOL_H */
