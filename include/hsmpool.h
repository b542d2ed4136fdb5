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

#endif /* HSMPOOL_H */
