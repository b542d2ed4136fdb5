/*
 * fault_shim.c: a PKCS #11 module of ours that sits between hsmpool and a real module
 * (SoftHSMv2 in the tests) and injects faults on chosen slots: errors with a probability
 * drawn from a seeded generator, delays, hangs, and resets of every session (as a vendor
 * client that lost its HSM connection would). Built by tests/tests/module_faults.rs with gcc.
 *
 *   HSMPOOL_SHIM_TARGET   the real module (read at C_GetFunctionList)
 *   HSMPOOL_SHIM_SEED     the generator's seed (default 1)
 *
 * The test drives it through one exported function, hsmpool_shim_control(const char *cmd):
 *   "SLOT ok"              no faults on slot SLOT (a slot id, in decimal)
 *   "SLOT fail RV PERMILLE"   calls on SLOT fail with CK_RV RV (hex) PERMILLE times in 1000
 *   "SLOT delay MS"        calls on SLOT take MS ms longer
 *   "SLOT hang"            calls on SLOT block until the slot's mode changes
 *   "SLOT lose RV PERMILLE"   creates on SLOT (C_CreateObject, C_GenerateKey(Pair),
 *                          C_UnwrapKey) are done, and then answered with RV PERMILLE times
 *                          in 1000, as when the answer is lost on its way back
 *   "SLOT reset"           every session open on SLOT is lost, as when a vendor client loses
 *                          its HSM: calls on them answer CKR_SESSION_HANDLE_INVALID from then
 *                          on (the real module's sessions are left alone: closing them under
 *                          other threads crashes SoftHSMv2 2.6), then "ok"
 * It returns 0, or -1 for a command it does not understand. hsmpool_shim_logins(SLOT) counts
 * the C_Login calls that reached the real module for SLOT. Calls made by the shim itself
 * and C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList and
 * C_GetSlotInfo are never faulted.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#define MAX_SLOTS 16

enum mode { MODE_OK, MODE_FAIL, MODE_DELAY, MODE_HANG, MODE_LOSE };

struct slot_fault {
    CK_SLOT_ID slot;
    int used;
    enum mode mode;
    CK_RV rv;
    unsigned permille;
    unsigned delay_ms;
    unsigned resets;
    long logins;
};

/* Sessions by handle (SoftHSMv2 numbers them from 1 up): the slot and the slot's reset count
 * when it was opened; a session opened before the slot's last reset is lost. */
#define MAX_SESSIONS (1u << 20)
struct session_entry {
    CK_SLOT_ID slot;
    unsigned epoch;
    int known;
};
static struct session_entry sessions[MAX_SESSIONS];

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct slot_fault faults[MAX_SLOTS];
static uint64_t rng_state = 1;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST shim;
static int ready;

static uint64_t next_random(void)
{
    /* xorshift64*, under the lock */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 2685821657736338717ULL;
}

static struct slot_fault *find_slot(CK_SLOT_ID slot, int create)
{
    for (int i = 0; i < MAX_SLOTS; i++)
        if (faults[i].used && faults[i].slot == slot)
            return &faults[i];
    if (!create)
        return NULL;
    for (int i = 0; i < MAX_SLOTS; i++)
        if (!faults[i].used) {
            memset(&faults[i], 0, sizeof faults[i]);
            faults[i].used = 1;
            faults[i].slot = slot;
            return &faults[i];
        }
    return NULL;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* The fault for one call on `slot`: CKR_OK to go on to the real module, else the CK_RV to
 * answer with. Delays and hangs happen here. */
static CK_RV fault(CK_SLOT_ID slot)
{
    for (;;) {
        pthread_mutex_lock(&lock);
        struct slot_fault *f = find_slot(slot, 0);
        enum mode m = f ? f->mode : MODE_OK;
        CK_RV rv = CKR_OK;
        unsigned delay = 0;
        if (m == MODE_FAIL && next_random() % 1000 < f->permille)
            rv = f->rv;
        if (m == MODE_DELAY)
            delay = f->delay_ms;
        pthread_mutex_unlock(&lock);
        if (m == MODE_HANG) {
            sleep_ms(5);
            continue;
        }
        if (delay)
            sleep_ms(delay);
        return rv;
    }
}

/* After a create on session h that the real module did: the answer to give in its place
 * (CKR_OK: its own), for "lose". */
static CK_RV lost_answer(CK_SESSION_HANDLE h, CK_RV real_rv)
{
    CK_SESSION_INFO info;
    if (real_rv != CKR_OK || real->C_GetSessionInfo(h, &info) != CKR_OK)
        return real_rv;
    pthread_mutex_lock(&lock);
    struct slot_fault *f = find_slot(info.slotID, 0);
    CK_RV rv = CKR_OK;
    if (f && f->mode == MODE_LOSE && next_random() % 1000 < f->permille)
        rv = f->rv;
    pthread_mutex_unlock(&lock);
    return rv != CKR_OK ? rv : real_rv;
}

static CK_RV fault_session(CK_SESSION_HANDLE h)
{
    CK_SLOT_ID slot;
    int lost = 0;
    pthread_mutex_lock(&lock);
    int known = h < MAX_SESSIONS && sessions[h].known;
    if (known) {
        slot = sessions[h].slot;
        struct slot_fault *f = find_slot(slot, 0);
        lost = f && sessions[h].epoch < f->resets;
    }
    pthread_mutex_unlock(&lock);
    if (lost)
        return CKR_SESSION_HANDLE_INVALID;
    if (!known) {
        CK_SESSION_INFO info;
        if (real->C_GetSessionInfo(h, &info) != CKR_OK)
            return CKR_OK; /* the real module answers for a bad handle */
        slot = info.slotID;
    }
    return fault(slot);
}

static CK_RV shim_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, void *app, CK_NOTIFY notify,
                                CK_SESSION_HANDLE *phSession)
{
    CK_RV rv = fault(slotID);
    if (rv != CKR_OK)
        return rv;
    rv = real->C_OpenSession(slotID, flags, app, notify, phSession);
    if (rv == CKR_OK && phSession && *phSession < MAX_SESSIONS) {
        pthread_mutex_lock(&lock);
        struct slot_fault *f = find_slot(slotID, 0);
        sessions[*phSession].slot = slotID;
        sessions[*phSession].epoch = f ? f->resets : 0;
        sessions[*phSession].known = 1;
        pthread_mutex_unlock(&lock);
    }
    return rv;
}

int hsmpool_shim_control(const char *cmd)
{
    unsigned long long slot;
    char verb[16];
    int used = 0;
    if (!cmd || sscanf(cmd, "%llu %15s%n", &slot, verb, &used) != 2)
        return -1;
    const char *rest = cmd + used;
    pthread_mutex_lock(&lock);
    struct slot_fault *f = find_slot((CK_SLOT_ID)slot, 1);
    int ok = f != NULL;
    if (ok && strcmp(verb, "ok") == 0) {
        f->mode = MODE_OK;
    } else if (ok && strcmp(verb, "fail") == 0) {
        unsigned long rv;
        unsigned permille;
        ok = sscanf(rest, " %lx %u", &rv, &permille) == 2;
        if (ok) {
            f->mode = MODE_FAIL;
            f->rv = rv;
            f->permille = permille;
        }
    } else if (ok && strcmp(verb, "delay") == 0) {
        unsigned ms;
        ok = sscanf(rest, " %u", &ms) == 1;
        if (ok) {
            f->mode = MODE_DELAY;
            f->delay_ms = ms;
        }
    } else if (ok && strcmp(verb, "lose") == 0) {
        unsigned long rv;
        unsigned permille;
        ok = sscanf(rest, " %lx %u", &rv, &permille) == 2;
        if (ok) {
            f->mode = MODE_LOSE;
            f->rv = rv;
            f->permille = permille;
        }
    } else if (ok && strcmp(verb, "hang") == 0) {
        f->mode = MODE_HANG;
    } else if (ok && strcmp(verb, "reset") == 0) {
        f->mode = MODE_OK;
        f->resets++;
    } else {
        ok = 0;
    }
    pthread_mutex_unlock(&lock);
    return ok ? 0 : -1;
}

/* ----- wrappers: a fault first, then the real function ----- */

#define BY_SLOT(name, params, slot, args)                                                      \
    static CK_RV shim_##name params                                                            \
    {                                                                                          \
        CK_RV rv = fault(slot);                                                                \
        return rv != CKR_OK ? rv : real->name args;                                            \
    }

#define BY_SESSION(name, params, args)                                                         \
    static CK_RV shim_##name params                                                            \
    {                                                                                          \
        CK_RV rv = fault_session(hSession);                                                    \
        return rv != CKR_OK ? rv : real->name args;                                            \
    }

/* A create: done by the real module, whose answer "lose" may replace. */
#define CREATE(name, params, args)                                                             \
    static CK_RV shim_##name params                                                            \
    {                                                                                          \
        CK_RV rv = fault_session(hSession);                                                    \
        return rv != CKR_OK ? rv : lost_answer(hSession, real->name args);                     \
    }

BY_SLOT(C_GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO *pInfo), slotID, (slotID, pInfo))
static CK_RV shim_C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR *pPin,
                          CK_ULONG ulPinLen)
{
    CK_RV rv = fault_session(hSession);
    if (rv != CKR_OK)
        return rv;
    CK_SESSION_INFO info;
    if (real->C_GetSessionInfo(hSession, &info) == CKR_OK) {
        pthread_mutex_lock(&lock);
        struct slot_fault *f = find_slot(info.slotID, 1);
        if (f)
            f->logins++;
        pthread_mutex_unlock(&lock);
    }
    return real->C_Login(hSession, userType, pPin, ulPinLen);
}

long hsmpool_shim_logins(unsigned long long slot)
{
    pthread_mutex_lock(&lock);
    struct slot_fault *f = find_slot((CK_SLOT_ID)slot, 0);
    long n = f ? f->logins : 0;
    pthread_mutex_unlock(&lock);
    return n;
}
CREATE(C_CreateObject,
           (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE *pTemplate, CK_ULONG ulCount,
            CK_OBJECT_HANDLE *phObject),
           (hSession, pTemplate, ulCount, phObject))
BY_SESSION(C_GetAttributeValue,
           (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE *pTemplate,
            CK_ULONG ulCount),
           (hSession, hObject, pTemplate, ulCount))
BY_SESSION(C_FindObjectsInit,
           (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE *pTemplate, CK_ULONG ulCount),
           (hSession, pTemplate, ulCount))
BY_SESSION(C_SignInit,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey),
           (hSession, pMechanism, hKey))
BY_SESSION(C_Sign,
           (CK_SESSION_HANDLE hSession, CK_BYTE *pData, CK_ULONG ulDataLen, CK_BYTE *pSignature,
            CK_ULONG *pulSignatureLen),
           (hSession, pData, ulDataLen, pSignature, pulSignatureLen))
BY_SESSION(C_VerifyInit,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey),
           (hSession, pMechanism, hKey))
BY_SESSION(C_EncryptInit,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey),
           (hSession, pMechanism, hKey))
BY_SESSION(C_DecryptInit,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey),
           (hSession, pMechanism, hKey))
CREATE(C_GenerateKey,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_ATTRIBUTE *pTemplate,
            CK_ULONG ulCount, CK_OBJECT_HANDLE *phKey),
           (hSession, pMechanism, pTemplate, ulCount, phKey))
CREATE(C_GenerateKeyPair,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_ATTRIBUTE *pPublicKeyTemplate,
            CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE *pPrivateKeyTemplate,
            CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE *phPublicKey,
            CK_OBJECT_HANDLE *phPrivateKey),
           (hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
            pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey))
BY_SESSION(C_WrapKey,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hWrappingKey,
            CK_OBJECT_HANDLE hKey, CK_BYTE *pWrappedKey, CK_ULONG *pulWrappedKeyLen),
           (hSession, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen))
CREATE(C_UnwrapKey,
           (CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
            CK_BYTE *pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE *pTemplate,
            CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE *phKey),
           (hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate,
            ulAttributeCount, phKey))
BY_SESSION(C_GenerateRandom,
           (CK_SESSION_HANDLE hSession, CK_BYTE *pRandomData, CK_ULONG ulRandomLen),
           (hSession, pRandomData, ulRandomLen))

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ppFunctionList)
{
    if (!ppFunctionList)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    if (!ready) {
        const char *path = getenv("HSMPOOL_SHIM_TARGET");
        const char *seed = getenv("HSMPOOL_SHIM_SEED");
        void *lib = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_RV (*get)(CK_FUNCTION_LIST **) = NULL;
        if (lib)
            *(void **)&get = dlsym(lib, "C_GetFunctionList");
        if (!get || get(&real) != CKR_OK || !real) {
            pthread_mutex_unlock(&lock);
            fprintf(stderr, "fault_shim: cannot load HSMPOOL_SHIM_TARGET (%s)\n",
                    path ? path : "unset");
            return CKR_GENERAL_ERROR;
        }
        rng_state = seed ? strtoull(seed, NULL, 10) : 1;
        if (rng_state == 0)
            rng_state = 1;
        shim = *real;
        shim.C_GetFunctionList = C_GetFunctionList;
#define WRAP(name) shim.name = shim_##name
        WRAP(C_GetTokenInfo);
        WRAP(C_OpenSession);
        WRAP(C_Login);
        WRAP(C_CreateObject);
        WRAP(C_GetAttributeValue);
        WRAP(C_FindObjectsInit);
        WRAP(C_SignInit);
        WRAP(C_Sign);
        WRAP(C_VerifyInit);
        WRAP(C_EncryptInit);
        WRAP(C_DecryptInit);
        WRAP(C_GenerateKey);
        WRAP(C_GenerateKeyPair);
        WRAP(C_WrapKey);
        WRAP(C_UnwrapKey);
        WRAP(C_GenerateRandom);
#undef WRAP
        ready = 1;
    }
    pthread_mutex_unlock(&lock);
    *ppFunctionList = &shim;
    return CKR_OK;
}
