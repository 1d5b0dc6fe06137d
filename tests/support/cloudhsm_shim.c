/*
 * A CloudHSM-behaviour PKCS#11 module for Cofre's tests: forwards to SoftHSM2 and
 * enforces the differences AWS documents for CloudHSM Client SDK 5.
 *
 * THIS IS NOT CLOUDHSM. It encodes our reading of AWS's documentation
 * (docs.aws.amazon.com/cloudhsm/latest/userguide/: pkcs11-mechanisms.html,
 * pkcs11-attributes-interpreting.html, manage-aes-key-wrapping.html, ki-pkcs11-sdk.html)
 * so that the code path Cofre runs on CloudHSM is exercised in every test run. Where
 * AWS names no error code, the code chosen here is ours (see docs/cloudhsm.md).
 *
 * What it changes, and nothing else (docs/cloudhsm.md, section 4, tabulates each with its
 * source and says which error codes are AWS's and which are ours):
 *  - Mechanisms: only those on SDK 5's list (pkcs11-mechanisms.html) are offered or
 *    accepted; any other is refused with CKR_MECHANISM_INVALID (ours).
 *  - Functions absent from SDK 5's list of PKCS#11 calls (pkcs11-apis.html), such as
 *    C_CopyObject, C_SetAttributeValue, C_SeedRandom or C_DigestKey, answer
 *    CKR_FUNCTION_NOT_SUPPORTED (ours: the PKCS#11 code for a function not offered).
 *  - Data limits: CKM_SHA256_HMAC over more than 16,288 bytes and CKM_AES_GCM
 *    C_Encrypt/C_Decrypt over more than 16,224 bytes (mechanism table, "Maximum data
 *    size for each mechanism"; ki-pkcs11-8 says "16 KB") fail with CKR_DATA_LEN_RANGE
 *    (ours); multi-part AES-GCM answers CKR_MECHANISM_INVALID (AWS's, ki-pkcs11-8);
 *    multi-part CKM_ECDSA ("single-part operations only") CKR_MECHANISM_INVALID (ours).
 *    The refused operation is ended.
 *  - AES key wrap only under the vendor numbers CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD
 *    (0x80002109, RFC 3394) and _ZERO_PAD (0x8000216F, RFC 5649), forwarded to
 *    SoftHSM2's 0x2109 / 0x210A. The standard 0x2109/0x210A/0x210B are absent from the
 *    mechanism list and refused (CKR_MECHANISM_INVALID).
 *  - AES-GCM encryption: the HSM picks the IV. The caller's pIv must be 12 zero bytes;
 *    the module writes its IV back into pIv (CKR_MECHANISM_PARAM_INVALID otherwise).
 *  - Templates (attr-errors.html, pkcs11-attributes-interpreting.html): generic secrets
 *    holding CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP or CKA_UNWRAP (unsupported for that key
 *    type) answer CKR_TEMPLATE_INCONSISTENT, AWS's code for an attribute CloudHSM does
 *    not support, and reading one of them answers CKR_ATTRIBUTE_TYPE_INVALID (AWS's code
 *    for reading such an attribute; since session 37); CKA_LOCAL (read-only, "R") answers CKR_ATTRIBUTE_READ_ONLY (AWS's);
 *    CKA_PRIVATE or CKA_MODIFIABLE set to false (footnote 1: "must be explicitly set
 *    only to the default value", True) answer CKR_ATTRIBUTE_VALUE_INVALID (ours). Empty
 *    CKA_ID or CKA_LABEL: CKR_ATTRIBUTE_VALUE_INVALID (ours).
 *  - Read-only sessions are refused with CKR_FUNCTION_FAILED (AWS's, ki-pkcs11-13).
 *  - At most 1,024 sessions open per process, an SDK 5 application (limits.html); one
 *    more answers CKR_SESSION_COUNT (ours). Closing one, C_CloseAllSessions or
 *    C_Finalize frees places.
 *  - C_Initialize(NULL) asks SoftHSM2 for OS locking (CKF_OS_LOCKING_OK), as a networked
 *    library that serves many threads would lock for itself; C_GetInfo names this
 *    module ("Cofre CloudHSM-behaviour shim"), not SoftHSM, whose unlocked module the
 *    vault serialises (session 45; the slot and token still say SoftHSM).
 *  - COFRE_SHIM_LATENCY_US: microseconds slept before every forwarded call (the network
 *    round trip to a cluster).
 *  - COFRE_SHIM_KEY_AVAILABILITY_MS: a new token key is refused (CKR_KEY_HANDLE_INVALID,
 *    ours) for this long after creation, as a key not yet on a quorum of HSMs
 *    (working-client-sync.html: "any attempt to create or use a token key will fail").
 *    Crypto calls are refused; with COFRE_SHIM_GATE_ATTRIBUTES=1 (or configure's third
 *    argument) reading the new key's attributes is refused too: our reading of "use".
 *  - COFRE_SHIM_FAULT_FILE: a control file, read on every call, that makes chosen calls
 *    fail with CKR_DEVICE_ERROR, CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED or
 *    CKR_TOKEN_NOT_PRESENT, as a client sees when its connection to an HSM drops or an
 *    HSM is replaced, or CKR_FUNCTION_FAILED or CKR_OPERATION_ACTIVE, a busy (throttled)
 *    HSM (troubleshoot-hsm-throttling.html names both), or black-hole (HANG: a connection that stops answering) until
 *    the file changes (section "faults" below; the codes and what they do to sessions
 *    are our choice: docs/cloudhsm.md, "When the HSM fails"). Tests only. While a file
 *    of the same name plus ".hang-initialize" exists, C_Initialize waits for it to go
 *    (a client whose cluster does not answer).
 *  - C_Login as the user with a PIN that is not "<CU user name>:<password>" (no ':';
 *    pkcs11-pin.html) answers CKR_PIN_INCORRECT (our assumption: AWS names no code).
 *  - COFRE_SHIM_LOGIN_LOCKOUT: after this many refused PINs in a row, C_Login answers
 *    CKR_PIN_LOCKED (ours) to every PIN, as AWS locks a crypto user out after five
 *    (cloudhsm_cli-login.html; key_mgmt_util-loginHSM.html). Off unless set; tests only.
 *  - COFRE_SHIM_TARGET: the module to forward to (default SoftHSM2's).
 *  - COFRE_SHIM_HIDE_MECHANISMS: mechanism numbers (comma-separated, C notation: 0x1087)
 *    this token lacks: left out of the list, refused by C_GetMechanismInfo and by every
 *    call that names them (CKR_MECHANISM_INVALID), as on an HSM without them. Tests only
 *    (session 42: `cofre hsm status` on a token the vault cannot serve on).
 *  - cofre_shim_configure(latency_us, availability_ms, gate_attributes): the tests' way
 *    to change these at run time in a process that already loaded the shim;
 *    cofre_shim_round_trips(): how many calls it has sent as round trips so far.
 *
 * Built by the test harness (tests/support/cloudhsm_shim.py) into the pytest temp dir:
 *   gcc -shared -fPIC -O2 -I/usr/include/p11-kit-1 cloudhsm_shim.c -o ... -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define VENDOR_WRAP_NO_PAD 0x80002109UL
#define VENDOR_WRAP_ZERO_PAD 0x8000216FUL
#define STD_WRAP 0x2109UL
#define STD_WRAP_PAD 0x210AUL
#define STD_WRAP_KWP 0x210BUL
#define MAX_PENDING_KEYS 256
/* pkcs11-mechanisms.html, footnote 2 (maximum data size): CKM_SHA256_HMAC. */
#define HMAC_SHA256_MAX_DATA 16288UL
/* pkcs11-mechanisms.html, "Maximum data size for each mechanism": CKM_AES_GCM 16,224
 * bytes per C_Encrypt/C_Decrypt buffer (ki-pkcs11-8 rounds it to "16 KB"; until session
 * 34 the shim let 16,384 through). */
#define GCM_MAX_DATA 16224UL
#define OP_SLOTS 1024 /* limits.html: 1,024 sessions per application */
#define SDK5_MAX_SESSIONS 1024L /* limits.html: "PKCS#11 sessions per application" */

/* SDK 5's mechanism list (pkcs11-mechanisms.html), as numbers SoftHSM2 can serve (the
 * vendor AES wraps are mapped below; CKM_CLOUDHSM_AES_GCM has no SoftHSM2 twin). */
static const CK_MECHANISM_TYPE sdk5_mechanisms[] = {
    /* generate key and key pair */
    CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_X9_31_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN,
    CKM_GENERIC_SECRET_KEY_GEN, CKM_AES_KEY_GEN, CKM_DES3_KEY_GEN,
    /* sign and verify */
    CKM_RSA_X_509, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_SHA1_RSA_PKCS, CKM_SHA224_RSA_PKCS,
    CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS, CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS, CKM_ECDSA, CKM_ECDSA_SHA1, CKM_ECDSA_SHA224, CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384, CKM_ECDSA_SHA512, CKM_SHA_1_HMAC, CKM_SHA224_HMAC, CKM_SHA256_HMAC,
    CKM_SHA384_HMAC, CKM_SHA512_HMAC, CKM_AES_CMAC,
    /* digest */
    CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512,
    /* encrypt and decrypt */
    CKM_RSA_PKCS_OAEP, CKM_AES_ECB, CKM_AES_CTR, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_GCM,
    CKM_DES3_ECB, CKM_DES3_CBC, CKM_DES3_CBC_PAD,
    /* derive ("ECDH with KDF"), wrap and unwrap */
    CKM_ECDH1_DERIVE, CKM_RSA_AES_KEY_WRAP,
};

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST shim;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static CK_RV load_error = CKR_OK;
static long latency_us;
static long availability_ms;
static int gate_attributes;
#define MAX_HIDDEN 16
static CK_MECHANISM_TYPE hidden[MAX_HIDDEN];
static size_t hidden_count;

/* The mechanism of the sign / encrypt / decrypt operation each session has open, for
 * the data limits above. Indexed by handle; a slot holding another handle means "not
 * recorded", so a collision can only let a call through, never refuse one. */
static struct { CK_SESSION_HANDLE s; CK_MECHANISM_TYPE sign, enc, dec; } ops[OP_SLOTS];
static pthread_mutex_t ops_lock = PTHREAD_MUTEX_INITIALIZER;
#define NO_OP ((CK_MECHANISM_TYPE)-1)

/* Token keys created less than availability_ms ago: (handle, ready-at in ms). */
static struct { CK_OBJECT_HANDLE handle; long long ready_at; } pending[MAX_PENDING_KEYS];
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Calls forwarded as round trips (each pays `latency_us`), for cofre_shim_round_trips. */
static long round_trips;

static void delay(void) {
    __atomic_add_fetch(&round_trips, 1, __ATOMIC_RELAXED);
    if (latency_us > 0) {
        struct timespec ts = {latency_us / 1000000, (latency_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

static void remember_new_key(CK_OBJECT_HANDLE handle) {
    if (availability_ms <= 0) return;
    pthread_mutex_lock(&pending_lock);
    long long now = now_ms();
    for (int i = 0; i < MAX_PENDING_KEYS; i++) {
        if (pending[i].handle == 0 || pending[i].ready_at <= now) {
            pending[i].handle = handle;
            pending[i].ready_at = now + availability_ms;
            break;
        }
    }
    pthread_mutex_unlock(&pending_lock);
}

static int key_available(CK_OBJECT_HANDLE handle) {
    if (availability_ms <= 0) return 1;
    int ok = 1;
    pthread_mutex_lock(&pending_lock);
    long long now = now_ms();
    for (int i = 0; i < MAX_PENDING_KEYS; i++)
        if (pending[i].handle == handle && pending[i].ready_at > now) ok = 0;
    pthread_mutex_unlock(&pending_lock);
    return ok;
}

static int is_hidden(CK_MECHANISM_TYPE type) {
    for (size_t i = 0; i < hidden_count; i++)
        if (hidden[i] == type) return 1;
    return 0;
}

static int in_sdk5_list(CK_MECHANISM_TYPE type) {
    if (is_hidden(type)) return 0;
    for (size_t i = 0; i < sizeof sdk5_mechanisms / sizeof sdk5_mechanisms[0]; i++)
        if (sdk5_mechanisms[i] == type) return 1;
    return 0;
}

/* Record (or, with NO_OP, clear) session s's open operation of one kind. */
enum op_kind { OP_SIGN, OP_ENC, OP_DEC };
static void op_set(CK_SESSION_HANDLE s, enum op_kind kind, CK_MECHANISM_TYPE mech) {
    pthread_mutex_lock(&ops_lock);
    size_t i = s % OP_SLOTS;
    if (ops[i].s != s) {
        ops[i].s = s;
        ops[i].sign = ops[i].enc = ops[i].dec = NO_OP;
    }
    if (kind == OP_SIGN) ops[i].sign = mech;
    if (kind == OP_ENC) ops[i].enc = mech;
    if (kind == OP_DEC) ops[i].dec = mech;
    pthread_mutex_unlock(&ops_lock);
}

static CK_MECHANISM_TYPE op_get(CK_SESSION_HANDLE s, enum op_kind kind) {
    CK_MECHANISM_TYPE mech = NO_OP;
    pthread_mutex_lock(&ops_lock);
    size_t i = s % OP_SLOTS;
    if (ops[i].s == s)
        mech = kind == OP_SIGN ? ops[i].sign : kind == OP_ENC ? ops[i].enc : ops[i].dec;
    pthread_mutex_unlock(&ops_lock);
    return mech;
}

static int is_standard_wrap(CK_MECHANISM_TYPE type) {
    return type == STD_WRAP || type == STD_WRAP_PAD || type == STD_WRAP_KWP;
}

/* Vendor wrap numbers become SoftHSM2's; standard wrap numbers are refused. */
static CK_RV translate(CK_MECHANISM_PTR in, CK_MECHANISM *out) {
    if (in == NULL) return CKR_ARGUMENTS_BAD;
    *out = *in;
    if (is_standard_wrap(in->mechanism) || is_hidden(in->mechanism)) return CKR_MECHANISM_INVALID;
    if (in->mechanism == VENDOR_WRAP_NO_PAD) out->mechanism = STD_WRAP;
    else if (in->mechanism == VENDOR_WRAP_ZERO_PAD) out->mechanism = STD_WRAP_PAD;
    else if (!in_sdk5_list(in->mechanism)) return CKR_MECHANISM_INVALID;
    return CKR_OK;
}

static CK_ATTRIBUTE_PTR find_attr(CK_ATTRIBUTE_PTR tpl, CK_ULONG n, CK_ATTRIBUTE_TYPE type) {
    for (CK_ULONG i = 0; i < n; i++)
        if (tpl[i].type == type) return &tpl[i];
    return NULL;
}

static int attr_true(CK_ATTRIBUTE_PTR tpl, CK_ULONG n, CK_ATTRIBUTE_TYPE type) {
    CK_ATTRIBUTE_PTR a = find_attr(tpl, n, type);
    return a && a->pValue && a->ulValueLen == sizeof(CK_BBOOL) && *(CK_BBOOL *)a->pValue;
}

static int attr_false(CK_ATTRIBUTE_PTR tpl, CK_ULONG n, CK_ATTRIBUTE_TYPE type) {
    CK_ATTRIBUTE_PTR a = find_attr(tpl, n, type);
    return a && a->pValue && a->ulValueLen == sizeof(CK_BBOOL) && !*(CK_BBOOL *)a->pValue;
}

/* SDK 5's attribute rules, as far as Cofre's templates reach them. */
static CK_RV check_template(CK_ATTRIBUTE_PTR tpl, CK_ULONG n, int generic_secret) {
    if (tpl == NULL && n > 0) return CKR_ARGUMENTS_BAD;
    CK_ATTRIBUTE_PTR key_type = find_attr(tpl, n, CKA_KEY_TYPE);
    if (key_type && key_type->pValue && key_type->ulValueLen == sizeof(CK_KEY_TYPE) &&
        *(CK_KEY_TYPE *)key_type->pValue == CKK_GENERIC_SECRET)
        generic_secret = 1;
    if (generic_secret) {
        static const CK_ATTRIBUTE_TYPE unsupported[] = {CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP,
                                                        CKA_UNWRAP};
        for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
            if (find_attr(tpl, n, unsupported[i])) return CKR_TEMPLATE_INCONSISTENT;
    }
    /* "R": read-only, set by the HSM (attribute tables); attr-errors.html's code. */
    if (find_attr(tpl, n, CKA_LOCAL)) return CKR_ATTRIBUTE_READ_ONLY;
    /* Footnote 1: partially supported, "must be explicitly set only to the default
     * value" (True). The code is ours. */
    if (attr_false(tpl, n, CKA_PRIVATE) || attr_false(tpl, n, CKA_MODIFIABLE))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    CK_ATTRIBUTE_PTR id = find_attr(tpl, n, CKA_ID);
    CK_ATTRIBUTE_PTR label = find_attr(tpl, n, CKA_LABEL);
    if ((id && id->ulValueLen == 0) || (label && label->ulValueLen == 0))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    return CKR_OK;
}

/* ------------------------------------------------------------------ faults (tests only)
 * COFRE_SHIM_FAULT_FILE names a control file read on every call of the functions below,
 * so a test can switch a fault on and off while a vault runs in another process. Up to
 * four lines, one rule each (the first that applies to a call answers it), "CODE COUNT
 * FUNCTIONS":
 *   CODE       DEVICE_ERROR, SESSION_HANDLE_INVALID, SESSION_CLOSED, TOKEN_NOT_PRESENT,
 *              FUNCTION_FAILED (AWS's code for a busy, throttled HSM after the SDK's own
 *              retries: troubleshoot-hsm-throttling.html; kills nothing), OPERATION_ACTIVE
 *              (the same page's other PKCS#11 code for a busy HSM, "busy errors map to
 *              CKR_OPERATION_ACTIVE errors"; kills nothing: what the SDK leaves on the
 *              session then is not documented, and the vault drops it anyway);
 *              or HANG: the call black-holes (a connection that stops answering without
 *              closing) until the file changes, then goes on as if nothing happened
 *   COUNT      how many calls fail (then none, until the file changes), or * for every
 *              call until the file is emptied or removed
 *   FUNCTIONS  comma-separated names from fn_names (e.g. C_Sign,C_SignInit), or *
 * What a lost connection does to the client's sessions is our choice (docs/cloudhsm.md,
 * "When the HSM fails"): SESSION_HANDLE_INVALID and SESSION_CLOSED kill the session the
 * call was made on; TOKEN_NOT_PRESENT kills every session and ends the login (an HSM
 * replaced); DEVICE_ERROR kills nothing. A killed session answers
 * CKR_SESSION_HANDLE_INVALID to every later call, C_CloseSession included; it is kept
 * open in SoftHSM2 until that C_CloseSession, so its handle is never handed out again
 * while the application still holds it. The shim writes "<injected> <zombies> <live>" to
 * FILE.report after each change: faults injected since the file last changed, killed
 * sessions the application has not closed yet, and live sessions it holds open. A file it
 * cannot parse injects nothing and reports "malformed". */
enum fn {
    FN_NONE, FN_OPEN_SESSION, FN_LOGIN, FN_FIND_OBJECTS_INIT, FN_FIND_OBJECTS,
    FN_FIND_OBJECTS_FINAL, FN_SIGN_INIT, FN_SIGN, FN_ENCRYPT_INIT, FN_ENCRYPT,
    FN_ENCRYPT_UPDATE, FN_DECRYPT_INIT, FN_DECRYPT, FN_DECRYPT_UPDATE, FN_WRAP_KEY,
    FN_UNWRAP_KEY, FN_GENERATE_RANDOM, FN_GET_ATTRIBUTE_VALUE, FN_COUNT
};
static const char *const fn_names[FN_COUNT] = {
    "", "C_OpenSession", "C_Login", "C_FindObjectsInit", "C_FindObjects",
    "C_FindObjectsFinal", "C_SignInit", "C_Sign", "C_EncryptInit", "C_Encrypt",
    "C_EncryptUpdate", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_WrapKey",
    "C_UnwrapKey", "C_GenerateRandom", "C_GetAttributeValue",
};
/* Not a PKCS#11 code: the call black-holes (see fault_for). */
#define RV_HANG ((CK_RV)0xFFFFFFFEUL)
static const struct { const char *name; CK_RV rv; } fault_codes[] = {
    {"DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"HANG", RV_HANG},
};
#define FAULT_LINE_MAX 512
#define FAULT_TEXT_MAX 2048
#define FAULT_RULES 4
static const char *fault_file;
static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;
static char fault_text[FAULT_TEXT_MAX];
static struct {
    CK_RV rv;
    long left;         /* calls still to fail; -1: every call */
    unsigned long fns; /* bit i: fn_names[i] fails */
} rules[FAULT_RULES];
static long fault_injected;
static int fault_malformed;

/* Sessions the shim has seen open, by handle: live, or killed by a fault (a zombie). */
enum { S_FREE, S_LIVE, S_DEAD };
static struct { CK_SESSION_HANDLE s; int state; } sessions[OP_SLOTS];

static long sessions_locked(int state) {
    long n = 0;
    for (int i = 0; i < OP_SLOTS; i++) n += sessions[i].state == state;
    return n;
}

static void fault_report_locked(void) {
    char path[FAULT_LINE_MAX + 16];
    snprintf(path, sizeof path, "%s.report", fault_file);
    char tmp[FAULT_LINE_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.report.tmp", fault_file);
    FILE *out = fopen(tmp, "w");
    if (out == NULL) return;
    if (fault_malformed) fprintf(out, "malformed\n");
    else
        fprintf(out, "%ld %ld %ld\n", fault_injected, sessions_locked(S_DEAD),
                sessions_locked(S_LIVE));
    fclose(out);
    rename(tmp, path); /* a reader sees the old report or the new one, never half */
}

/* One rule from one line; 0 when the line is malformed. */
static int fault_parse_rule(char *line, int r) {
    char code[64], count[32], fns[FAULT_LINE_MAX];
    if (sscanf(line, "%63s %31s %511s", code, count, fns) != 3) return 0;
    for (size_t i = 0; i < sizeof fault_codes / sizeof fault_codes[0]; i++)
        if (strcmp(code, fault_codes[i].name) == 0) rules[r].rv = fault_codes[i].rv;
    if (rules[r].rv == CKR_OK) return 0;
    if (strcmp(count, "*") == 0) rules[r].left = -1;
    else {
        char *end;
        rules[r].left = strtol(count, &end, 10);
        if (*end != '\0' || rules[r].left <= 0) return 0;
    }
    for (char *save = NULL, *name = strtok_r(fns, ",", &save); name != NULL;
         name = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int i = 1; i < FN_COUNT; i++)
            if (strcmp(name, "*") == 0 || strcmp(name, fn_names[i]) == 0) {
                rules[r].fns |= 1UL << i;
                found = 1;
            }
        if (!found) return 0;
    }
    return 1;
}

static void fault_parse_locked(char *text) {
    memset(rules, 0, sizeof rules);
    fault_injected = 0;
    fault_malformed = 0;
    int r = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (r == FAULT_RULES || !fault_parse_rule(line, r++)) {
            memset(rules, 0, sizeof rules);
            fault_malformed = 1;
            return;
        }
    }
}

/* Kill session s (or, with s == 0, every live one): later calls on it are refused. */
static void kill_sessions_locked(CK_SESSION_HANDLE s) {
    for (int i = 0; i < OP_SLOTS; i++)
        if (sessions[i].state == S_LIVE && (s == 0 || sessions[i].s == s))
            sessions[i].state = S_DEAD;
}

/* Wait, polling every 20 ms, while the control file still reads `text`. */
static void hang_until_changed(const char *text) {
    struct timespec ts = {0, 20 * 1000000L};
    char now[FAULT_TEXT_MAX];
    for (;;) {
        nanosleep(&ts, NULL);
        size_t n = 0;
        FILE *in = fopen(fault_file, "r");
        if (in != NULL) {
            n = fread(now, 1, sizeof now - 1, in);
            fclose(in);
        }
        now[n] = '\0';
        if (strcmp(now, text) != 0) return;
    }
}

/* The fault to answer for a call of `f` on session s (0 before a session exists). */
static CK_RV fault_for(enum fn f, CK_SESSION_HANDLE s) {
    if (fault_file == NULL) return CKR_OK;
    char text[FAULT_TEXT_MAX];
    size_t n = 0;
    FILE *in = fopen(fault_file, "r");
    if (in != NULL) {
        n = fread(text, 1, sizeof text - 1, in);
        fclose(in);
    }
    text[n] = '\0';
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&fault_lock);
    if (strcmp(text, fault_text) != 0) {
        memcpy(fault_text, text, n + 1);
        fault_parse_locked(text); /* tokenises its copy */
        fault_report_locked();
    }
    for (int r = 0; f != FN_NONE && rv == CKR_OK && r < FAULT_RULES; r++) {
        if (rules[r].rv == CKR_OK || rules[r].left == 0 || !(rules[r].fns & (1UL << f)))
            continue;
        rv = rules[r].rv;
        if (rules[r].left > 0) rules[r].left--;
    }
    if (rv == RV_HANG) {
        /* Counted (the report shows a call is hanging), then held outside the lock, so
         * other calls go on, until the control file changes. */
        fault_injected++;
        fault_report_locked();
        char held[FAULT_TEXT_MAX]; /* the file as read: `text` was tokenised if parsed */
        memcpy(held, fault_text, sizeof held);
        pthread_mutex_unlock(&fault_lock);
        hang_until_changed(held);
        return CKR_OK;
    }
    if (rv != CKR_OK) {
        fault_injected++;
        int logout = 0;
        if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
            if (s != 0) kill_sessions_locked(s);
        } else if (rv == CKR_TOKEN_NOT_PRESENT) {
            kill_sessions_locked(0);
            logout = 1;
        }
        /* The login ends with the HSM: logging out through any session ends it for the
         * application (PKCS#11), and the zombies keep their handles reserved. */
        for (int i = 0; logout && i < OP_SLOTS; i++)
            if (sessions[i].state == S_DEAD) {
                (void)real->C_Logout(sessions[i].s);
                break;
            }
        fault_report_locked();
    }
    pthread_mutex_unlock(&fault_lock);
    return rv;
}

static int session_dead(CK_SESSION_HANDLE s) {
    if (fault_file == NULL) return 0;
    pthread_mutex_lock(&fault_lock);
    int i = (int)(s % OP_SLOTS);
    int dead = sessions[i].state == S_DEAD && sessions[i].s == s;
    pthread_mutex_unlock(&fault_lock);
    return dead;
}

static void session_opened(CK_SESSION_HANDLE s) {
    if (fault_file == NULL) return;
    pthread_mutex_lock(&fault_lock);
    int i = (int)(s % OP_SLOTS);
    sessions[i].s = s;
    sessions[i].state = S_LIVE;
    fault_report_locked();
    pthread_mutex_unlock(&fault_lock);
}

/* Forget session s once closed; a zombie is closed in SoftHSM2 now (see above). */
static int session_closed(CK_SESSION_HANDLE s) {
    if (fault_file == NULL) return 0;
    pthread_mutex_lock(&fault_lock);
    int i = (int)(s % OP_SLOTS);
    int dead = sessions[i].s == s && sessions[i].state == S_DEAD;
    if (sessions[i].s == s) sessions[i].state = S_FREE;
    fault_report_locked();
    pthread_mutex_unlock(&fault_lock);
    return dead;
}

/* Every call on a session starts here: the network's latency, then a dead session's
 * refusal, then any fault the control file asks for. */
#define ENTER(f, s)                                                     \
    do {                                                                \
        delay();                                                        \
        if (session_dead(s)) return CKR_SESSION_HANDLE_INVALID;        \
        CK_RV fault_ = fault_for((f), (s));                             \
        if (fault_ != CKR_OK) return fault_;                            \
    } while (0)

/* While FILE.hang-initialize exists (FILE: COFRE_SHIM_FAULT_FILE), C_Initialize waits
 * for it to go, polling every 50 ms: a client whose cluster does not answer, which may
 * hang there rather than fail (docs/cloudhsm.md, "When the HSM fails"). Tests only. */
static void hang_while_asked(void) {
    if (fault_file == NULL) return;
    char path[FAULT_LINE_MAX + 32];
    snprintf(path, sizeof path, "%s.hang-initialize", fault_file);
    struct timespec ts = {0, 50 * 1000000L};
    while (access(path, F_OK) == 0) nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ overrides */
/* C_Initialize calls that returned, for cofre_shim_initializations (tests only). */
static long initializations;

static CK_RV shim_Initialize(CK_VOID_PTR args) {
    hang_while_asked();
    __atomic_add_fetch(&initializations, 1, __ATOMIC_RELAXED);
    if (args == NULL) {
        CK_C_INITIALIZE_ARGS locking;
        memset(&locking, 0, sizeof locking);
        locking.flags = CKF_OS_LOCKING_OK;
        return real->C_Initialize(&locking);
    }
    return real->C_Initialize(args);
}

static CK_RV shim_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list,
                                   CK_ULONG_PTR count) {
    if (count == NULL) return CKR_ARGUMENTS_BAD;
    delay();
    CK_ULONG n = 0;
    CK_RV rv = real->C_GetMechanismList(slot, NULL, &n);
    if (rv != CKR_OK) return rv;
    CK_MECHANISM_TYPE *all = calloc(n + 2, sizeof *all);
    if (all == NULL) return CKR_HOST_MEMORY;
    rv = real->C_GetMechanismList(slot, all, &n);
    if (rv != CKR_OK) {
        free(all);
        return rv;
    }
    CK_ULONG kept = 0;
    int has_wrap = 0, has_pad = 0;
    for (CK_ULONG i = 0; i < n; i++) {
        if (all[i] == STD_WRAP) has_wrap = 1;
        if (all[i] == STD_WRAP_PAD) has_pad = 1;
        if (in_sdk5_list(all[i])) all[kept++] = all[i];
    }
    if (has_wrap && !is_hidden(VENDOR_WRAP_NO_PAD)) all[kept++] = VENDOR_WRAP_NO_PAD;
    if (has_pad && !is_hidden(VENDOR_WRAP_ZERO_PAD)) all[kept++] = VENDOR_WRAP_ZERO_PAD;
    if (list == NULL) {
        *count = kept;
        rv = CKR_OK;
    } else if (*count < kept) {
        *count = kept;
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        memcpy(list, all, kept * sizeof *all);
        *count = kept;
        rv = CKR_OK;
    }
    free(all);
    return rv;
}

static CK_RV shim_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                   CK_MECHANISM_INFO_PTR info) {
    delay();
    if (is_hidden(type)) return CKR_MECHANISM_INVALID;
    if (type == VENDOR_WRAP_NO_PAD) type = STD_WRAP;
    else if (type == VENDOR_WRAP_ZERO_PAD) type = STD_WRAP_PAD;
    else if (!in_sdk5_list(type)) return CKR_MECHANISM_INVALID;
    return real->C_GetMechanismInfo(slot, type, info);
}

/* Sessions this application holds open, for limits.html's 1,024. A place is taken
 * before the call and given back if it fails, so racing opens never pass the limit. */
static long open_sessions;

static CK_RV shim_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app,
                              CK_NOTIFY notify, CK_SESSION_HANDLE_PTR session) {
    delay();
    /* ki-pkcs11-13: "the call will fail with the error CKR_FUNCTION_FAILED". */
    if (!(flags & CKF_RW_SESSION)) return CKR_FUNCTION_FAILED;
    CK_RV rv = fault_for(FN_OPEN_SESSION, 0);
    if (rv != CKR_OK) return rv;
    if (__atomic_add_fetch(&open_sessions, 1, __ATOMIC_SEQ_CST) > SDK5_MAX_SESSIONS) {
        __atomic_sub_fetch(&open_sessions, 1, __ATOMIC_SEQ_CST);
        return CKR_SESSION_COUNT;
    }
    rv = real->C_OpenSession(slot, flags, app, notify, session);
    if (rv != CKR_OK) __atomic_sub_fetch(&open_sessions, 1, __ATOMIC_SEQ_CST);
    if (rv == CKR_OK && session != NULL) session_opened(*session);
    return rv;
}

/* The module's own name (C_GetInfo's manufacturerID, blank-padded as PKCS#11 wants):
 * this is not SoftHSM2's module but one that initialised it with OS locking, so the
 * vault may call it from many threads, as it does CloudHSM's (hsm/session.py serialises
 * a module that calls itself SoftHSM: python-pkcs11 leaves that one without locking).
 * The slot and token still say SoftHSM, which `cofre serve` refuses without the
 * software-token allowance. */
static CK_RV shim_GetInfo(CK_INFO_PTR info) {
    CK_RV rv = real->C_GetInfo(info);
    if (rv == CKR_OK && info != NULL) {
        static const char name[] = "Cofre CloudHSM-behaviour shim";
        memset(info->manufacturerID, ' ', sizeof(info->manufacturerID));
        memcpy(info->manufacturerID, name, sizeof(name) - 1);
    }
    return rv;
}

static CK_RV shim_CloseAllSessions(CK_SLOT_ID slot) {
    delay();
    CK_RV rv = real->C_CloseAllSessions(slot);
    if (rv == CKR_OK) __atomic_store_n(&open_sessions, 0, __ATOMIC_SEQ_CST); /* one slot */
    return rv;
}

static CK_RV shim_Finalize(CK_VOID_PTR reserved) {
    CK_RV rv = real->C_Finalize(reserved);
    if (rv == CKR_OK) __atomic_store_n(&open_sessions, 0, __ATOMIC_SEQ_CST);
    return rv;
}

static CK_RV shim_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE wrapping,
                          CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
    ENTER(FN_WRAP_KEY, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if (!key_available(wrapping)) return CKR_KEY_HANDLE_INVALID;
    return real->C_WrapKey(s, &m, wrapping, key, out, out_len);
}

static CK_RV shim_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech,
                            CK_OBJECT_HANDLE unwrapping, CK_BYTE_PTR wrapped, CK_ULONG wrapped_len,
                            CK_ATTRIBUTE_PTR tpl, CK_ULONG n, CK_OBJECT_HANDLE_PTR key) {
    ENTER(FN_UNWRAP_KEY, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if ((rv = check_template(tpl, n, 0)) != CKR_OK) return rv;
    if (!key_available(unwrapping)) return CKR_KEY_HANDLE_INVALID;
    return real->C_UnwrapKey(s, &m, unwrapping, wrapped, wrapped_len, tpl, n, key);
}

static CK_RV shim_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR tpl,
                              CK_ULONG n, CK_OBJECT_HANDLE_PTR key) {
    ENTER(FN_NONE, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if ((rv = check_template(tpl, n, m.mechanism == CKM_GENERIC_SECRET_KEY_GEN)) != CKR_OK)
        return rv;
    rv = real->C_GenerateKey(s, &m, tpl, n, key);
    if (rv == CKR_OK && attr_true(tpl, n, CKA_TOKEN)) remember_new_key(*key);
    return rv;
}

static CK_RV shim_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech,
                                  CK_ATTRIBUTE_PTR pub, CK_ULONG npub, CK_ATTRIBUTE_PTR priv,
                                  CK_ULONG npriv, CK_OBJECT_HANDLE_PTR pub_key,
                                  CK_OBJECT_HANDLE_PTR priv_key) {
    ENTER(FN_NONE, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv == CKR_OK) rv = check_template(pub, npub, 0);
    if (rv == CKR_OK) rv = check_template(priv, npriv, 0);
    if (rv != CKR_OK) return rv;
    rv = real->C_GenerateKeyPair(s, &m, pub, npub, priv, npriv, pub_key, priv_key);
    if (rv == CKR_OK && attr_true(priv, npriv, CKA_TOKEN)) remember_new_key(*priv_key);
    return rv;
}

static CK_RV shim_CreateObject(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR tpl, CK_ULONG n,
                               CK_OBJECT_HANDLE_PTR obj) {
    ENTER(FN_NONE, s);
    CK_RV rv = check_template(tpl, n, 0);
    if (rv != CKR_OK) return rv;
    return real->C_CreateObject(s, tpl, n, obj);
}

static CK_RV shim_EncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
    ENTER(FN_ENCRYPT_INIT, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if (!key_available(key)) return CKR_KEY_HANDLE_INVALID;
    if (m.mechanism == CKM_AES_GCM) {
        CK_GCM_PARAMS *p = m.pParameter;
        if (p == NULL || m.ulParameterLen != sizeof *p || p->pIv == NULL || p->ulIvLen != 12)
            return CKR_MECHANISM_PARAM_INVALID;
        for (int i = 0; i < 12; i++)
            if (p->pIv[i] != 0) return CKR_MECHANISM_PARAM_INVALID;
        /* The HSM's IV, written where the caller's pIv points. */
        rv = real->C_GenerateRandom(s, p->pIv, 12);
        if (rv != CKR_OK) return rv;
    }
    rv = real->C_EncryptInit(s, &m, key);
    op_set(s, OP_ENC, rv == CKR_OK ? m.mechanism : NO_OP);
    return rv;
}

static CK_RV shim_DecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
    ENTER(FN_DECRYPT_INIT, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if (!key_available(key)) return CKR_KEY_HANDLE_INVALID;
    rv = real->C_DecryptInit(s, &m, key);
    op_set(s, OP_DEC, rv == CKR_OK ? m.mechanism : NO_OP);
    return rv;
}

static CK_RV shim_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
    ENTER(FN_SIGN_INIT, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if (!key_available(key)) return CKR_KEY_HANDLE_INVALID;
    rv = real->C_SignInit(s, &m, key);
    op_set(s, OP_SIGN, rv == CKR_OK ? m.mechanism : NO_OP);
    return rv;
}

static CK_RV shim_VerifyInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
    ENTER(FN_NONE, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    if (!key_available(key)) return CKR_KEY_HANDLE_INVALID;
    return real->C_VerifyInit(s, &m, key);
}

static CK_RV shim_DigestInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech) {
    ENTER(FN_NONE, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv != CKR_OK) return rv;
    return real->C_DigestInit(s, &m);
}

static CK_RV shim_DeriveKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE base,
                            CK_ATTRIBUTE_PTR tpl, CK_ULONG n, CK_OBJECT_HANDLE_PTR key) {
    ENTER(FN_NONE, s);
    CK_MECHANISM m;
    CK_RV rv = translate(mech, &m);
    if (rv == CKR_OK) rv = check_template(tpl, n, 0);
    if (rv != CKR_OK) return rv;
    if (!key_available(base)) return CKR_KEY_HANDLE_INVALID;
    return real->C_DeriveKey(s, &m, base, tpl, n, key);
}

/* ------------------------------------------------------------------ data limits
 * A refused call must end the operation, as a failed C_Sign / C_Encrypt does in
 * PKCS#11: each refusal below finishes it in SoftHSM2 into a scratch buffer that is
 * thrown away, so the session can start its next operation. */
static void end_sign(CK_SESSION_HANDLE s) {
    CK_BYTE zero[64] = {0}, out[1024];
    CK_ULONG len = sizeof out;
    (void)real->C_Sign(s, zero, 32, out, &len);
    op_set(s, OP_SIGN, NO_OP);
}

static void end_crypt(CK_SESSION_HANDLE s, enum op_kind kind) {
    CK_BYTE zero[32] = {0}, out[64];
    CK_ULONG len = sizeof out;
    if (kind == OP_ENC) (void)real->C_Encrypt(s, zero, 0, out, &len);
    else (void)real->C_Decrypt(s, zero, 16, out, &len); /* fails its tag: ended */
    op_set(s, kind, NO_OP);
}

static CK_RV shim_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
                       CK_ULONG_PTR ol) {
    ENTER(FN_SIGN, s);
    if (op_get(s, OP_SIGN) == CKM_SHA256_HMAC && l > HMAC_SHA256_MAX_DATA) {
        end_sign(s);
        return CKR_DATA_LEN_RANGE;
    }
    CK_RV rv = real->C_Sign(s, d, l, o, ol);
    if (!(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && o == NULL))) op_set(s, OP_SIGN, NO_OP);
    return rv;
}

static CK_RV shim_SignUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l) {
    ENTER(FN_NONE, s);
    if (op_get(s, OP_SIGN) == CKM_ECDSA) { /* "CKM_ECDSA – single-part operations only" */
        end_sign(s);
        return CKR_MECHANISM_INVALID;
    }
    return real->C_SignUpdate(s, d, l);
}

static CK_RV shim_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
                          CK_ULONG_PTR ol) {
    ENTER(FN_ENCRYPT, s);
    if (op_get(s, OP_ENC) == CKM_AES_GCM && l > GCM_MAX_DATA) {
        end_crypt(s, OP_ENC);
        return CKR_DATA_LEN_RANGE;
    }
    CK_RV rv = real->C_Encrypt(s, d, l, o, ol);
    if (!(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && o == NULL))) op_set(s, OP_ENC, NO_OP);
    return rv;
}

static CK_RV shim_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
                          CK_ULONG_PTR ol) {
    ENTER(FN_DECRYPT, s);
    if (op_get(s, OP_DEC) == CKM_AES_GCM && l > GCM_MAX_DATA) {
        end_crypt(s, OP_DEC);
        return CKR_DATA_LEN_RANGE;
    }
    CK_RV rv = real->C_Decrypt(s, d, l, o, ol);
    if (!(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && o == NULL))) op_set(s, OP_DEC, NO_OP);
    return rv;
}

/* ki-pkcs11-8: "We return CKR_MECHANISM_INVALID for the C_EncryptUpdate and
 * C_DecryptUpdate API operations" with CKM_AES_GCM. */
static CK_RV shim_EncryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
                                CK_ULONG_PTR ol) {
    ENTER(FN_ENCRYPT_UPDATE, s);
    if (op_get(s, OP_ENC) == CKM_AES_GCM) {
        end_crypt(s, OP_ENC);
        return CKR_MECHANISM_INVALID;
    }
    return real->C_EncryptUpdate(s, d, l, o, ol);
}

static CK_RV shim_DecryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
                                CK_ULONG_PTR ol) {
    ENTER(FN_DECRYPT_UPDATE, s);
    if (op_get(s, OP_DEC) == CKM_AES_GCM) {
        end_crypt(s, OP_DEC);
        return CKR_MECHANISM_INVALID;
    }
    return real->C_DecryptUpdate(s, d, l, o, ol);
}

/* Reading a not-yet-available key's attributes, refused only when gate_attributes is
 * set: AWS says a new key cannot be "used" before it reaches its quorum and does not
 * say whether reading its attributes is a use (our reading; the code is ours). */
static int generic_secret_lacks(CK_ATTRIBUTE_TYPE type) {
    return type == CKA_ENCRYPT || type == CKA_DECRYPT || type == CKA_WRAP || type == CKA_UNWRAP;
}

/* attr-errors.html: CKR_ATTRIBUTE_TYPE_INVALID answers a read of an attribute "not
 * supported by CloudHSM" for the key type; the attribute tables mark CKA_ENCRYPT,
 * CKA_DECRYPT, CKA_WRAP and CKA_UNWRAP unsupported for generic secrets. SoftHSM2 below
 * gives them its defaults (true); here they read as absent, each such entry's length
 * CK_UNAVAILABLE_INFORMATION and the others filled, as PKCS#11 asks of this code
 * (session 37: until then a generic secret read "can wrap" through the shim). */
static CK_RV shim_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t,
                                    CK_ULONG n) {
    ENTER(FN_GET_ATTRIBUTE_VALUE, s);
    if (gate_attributes && !key_available(o)) return CKR_KEY_HANDLE_INVALID;
    int asks_unsupported = 0;
    for (CK_ULONG i = 0; t != NULL && i < n; i++) asks_unsupported |= generic_secret_lacks(t[i].type);
    if (!asks_unsupported) return real->C_GetAttributeValue(s, o, t, n);
    CK_KEY_TYPE key_type = (CK_KEY_TYPE)-1;
    CK_ATTRIBUTE type_attr = {CKA_KEY_TYPE, &key_type, sizeof key_type};
    if (real->C_GetAttributeValue(s, o, &type_attr, 1) != CKR_OK || key_type != CKK_GENERIC_SECRET)
        return real->C_GetAttributeValue(s, o, t, n);
    CK_RV rv = CKR_OK;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV one;
        if (generic_secret_lacks(t[i].type)) {
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            one = CKR_ATTRIBUTE_TYPE_INVALID;
        } else {
            one = real->C_GetAttributeValue(s, o, &t[i], 1);
        }
        if (one != CKR_OK && (rv == CKR_OK || one != CKR_ATTRIBUTE_TYPE_INVALID)) rv = one;
    }
    return rv;
}

/* SDK 5's list of supported PKCS#11 calls has no C_CopyObject (pkcs11-apis.html). */
static CK_RV shim_CopyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tpl,
                             CK_ULONG n, CK_OBJECT_HANDLE_PTR copy) {
    (void)s; (void)obj; (void)tpl; (void)n; (void)copy;
    delay();
    return CKR_FUNCTION_NOT_SUPPORTED;
}

/* Every other call absent from SDK 5's list (pkcs11-apis.html). Their arguments are
 * never read. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define NOT_IN_SDK5(name, params) \
    static CK_RV shim_##name params { \
        delay();                       \
        return CKR_FUNCTION_NOT_SUPPORTED; \
    }

NOT_IN_SDK5(InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d))
NOT_IN_SDK5(InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c))
NOT_IN_SDK5(SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d,
                     CK_ULONG e))
NOT_IN_SDK5(GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
NOT_IN_SDK5(SetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c,
                                CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e))
NOT_IN_SDK5(GetObjectSize, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c))
NOT_IN_SDK5(SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c,
                                CK_ULONG d))
NOT_IN_SDK5(SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
NOT_IN_SDK5(SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                          CK_ULONG_PTR e))
NOT_IN_SDK5(VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
NOT_IN_SDK5(VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                            CK_ULONG_PTR e))
NOT_IN_SDK5(DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                                  CK_ULONG_PTR e))
NOT_IN_SDK5(DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                                  CK_ULONG_PTR e))
NOT_IN_SDK5(SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                                CK_ULONG_PTR e))
NOT_IN_SDK5(DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                                  CK_ULONG_PTR e))
NOT_IN_SDK5(SeedRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
NOT_IN_SDK5(GetFunctionStatus, (CK_SESSION_HANDLE a))
NOT_IN_SDK5(CancelFunction, (CK_SESSION_HANDLE a))
NOT_IN_SDK5(WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c))
#pragma GCC diagnostic pop

/* Not in the list either; it ends the digest C_DigestInit opened, as a failed call in
 * an operation does (python-pkcs11 counts on that). */
static CK_RV shim_DigestKey(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key) {
    (void)key;
    delay();
    CK_BYTE out[128];
    CK_ULONG len = sizeof out;
    (void)real->C_DigestFinal(s, out, &len);
    return CKR_FUNCTION_NOT_SUPPORTED;
}

/* ------------------------------------------------------------------ pass-through with latency */
#define DELAYED(name, params, args) \
    static CK_RV shim_##name params {  \
        delay();                       \
        return real->C_##name args;    \
    }

DELAYED(GetSlotList, (CK_BBOOL p, CK_SLOT_ID_PTR l, CK_ULONG_PTR c), (p, l, c))
DELAYED(GetSlotInfo, (CK_SLOT_ID s, CK_SLOT_INFO_PTR i), (s, i))
DELAYED(GetTokenInfo, (CK_SLOT_ID s, CK_TOKEN_INFO_PTR i), (s, i))
/* Calls on a session: refused on a killed one, and faulted when the control file says. */
#define ON_SESSION(name, f, params, args) \
    static CK_RV shim_##name params {     \
        ENTER(f, s);                      \
        return real->C_##name args;       \
    }

ON_SESSION(GetSessionInfo, FN_NONE, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))
/* COFRE_SHIM_LOGIN_LOCKOUT=N (0 or unset: off): after N refused PINs in a row, every
 * C_Login answers CKR_PIN_LOCKED, the right PIN's too, until this process ends. AWS: "If
 * you exceed five incorrect login attempts, your account is locked out" until an admin
 * resets the password (cloudhsm_cli-login.html; SDK 3: key_mgmt_util-loginHSM.html); the
 * code is ours. A login the module takes as already held checks no PIN and counts for
 * nothing. */
static long lockout_after;
static long logins_refused;
static pthread_mutex_t lockout_lock = PTHREAD_MUTEX_INITIALIZER;

/* pkcs11-pin.html: SDK 5's PIN is "<CU_user_name>:<password>". AWS names no code for a
 * PIN without the ':'; CKR_PIN_INCORRECT is our assumption (docs/cloudhsm.md). Such a
 * PIN names no user, so it counts toward no lockout here. A well-shaped PIN is passed
 * to SoftHSM2 whole: its one user's PIN is the tests' "<name>:<password>". */
static int pin_has_user(CK_UTF8CHAR_PTR p, CK_ULONG l) {
    return p != NULL && l > 0 && memchr(p, ':', l) != NULL;
}

static CK_RV shim_Login(CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR p, CK_ULONG l) {
    ENTER(FN_LOGIN, s);
    if (u == CKU_USER && !pin_has_user(p, l)) return CKR_PIN_INCORRECT;
    if (lockout_after <= 0) return real->C_Login(s, u, p, l);
    pthread_mutex_lock(&lockout_lock);
    int locked = logins_refused >= lockout_after;
    pthread_mutex_unlock(&lockout_lock);
    if (locked) return CKR_PIN_LOCKED;
    CK_RV rv = real->C_Login(s, u, p, l);
    pthread_mutex_lock(&lockout_lock);
    if (rv == CKR_PIN_INCORRECT) logins_refused++;
    else if (rv == CKR_OK) logins_refused = 0;
    pthread_mutex_unlock(&lockout_lock);
    return rv;
}
ON_SESSION(Logout, FN_NONE, (CK_SESSION_HANDLE s), (s))
ON_SESSION(DestroyObject, FN_NONE, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))
ON_SESSION(FindObjectsInit, FN_FIND_OBJECTS_INIT, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t,
           CK_ULONG n), (s, t, n))
ON_SESSION(FindObjects, FN_FIND_OBJECTS, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o,
           CK_ULONG m, CK_ULONG_PTR c), (s, o, m, c))
ON_SESSION(FindObjectsFinal, FN_FIND_OBJECTS_FINAL, (CK_SESSION_HANDLE s), (s))
ON_SESSION(GenerateRandom, FN_GENERATE_RANDOM, (CK_SESSION_HANDLE s, CK_BYTE_PTR r,
           CK_ULONG l), (s, r, l))
ON_SESSION(SignFinal, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR o, CK_ULONG_PTR l), (s, o, l))
ON_SESSION(EncryptFinal, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR o, CK_ULONG_PTR l),
           (s, o, l))
ON_SESSION(DecryptFinal, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR o, CK_ULONG_PTR l),
           (s, o, l))
ON_SESSION(Verify, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR g,
           CK_ULONG gl), (s, d, l, g, gl))
ON_SESSION(VerifyUpdate, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l), (s, d, l))
ON_SESSION(VerifyFinal, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR g, CK_ULONG l), (s, g, l))
ON_SESSION(Digest, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
           CK_ULONG_PTR ol), (s, d, l, o, ol))
ON_SESSION(DigestUpdate, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l), (s, d, l))
ON_SESSION(DigestFinal, FN_NONE, (CK_SESSION_HANDLE s, CK_BYTE_PTR o, CK_ULONG_PTR l), (s, o, l))

/* A killed session is closed in SoftHSM2 only now, and the call answers as on a dead one. */
static CK_RV shim_CloseSession(CK_SESSION_HANDLE s) {
    delay();
    int dead = session_closed(s);
    CK_RV rv = real->C_CloseSession(s);
    if (rv == CKR_OK) __atomic_sub_fetch(&open_sessions, 1, __ATOMIC_SEQ_CST);
    return dead ? CKR_SESSION_HANDLE_INVALID : rv;
}

static void load(void) {
    const char *target = getenv("COFRE_SHIM_TARGET");
    if (target == NULL || *target == '\0') target = "/usr/lib/softhsm/libsofthsm2.so";
    const char *latency = getenv("COFRE_SHIM_LATENCY_US");
    latency_us = latency ? strtol(latency, NULL, 10) : 0;
    const char *availability = getenv("COFRE_SHIM_KEY_AVAILABILITY_MS");
    availability_ms = availability ? strtol(availability, NULL, 10) : 0;
    const char *lockout = getenv("COFRE_SHIM_LOGIN_LOCKOUT");
    lockout_after = lockout ? strtol(lockout, NULL, 10) : 0;
    const char *faults = getenv("COFRE_SHIM_FAULT_FILE");
    fault_file = faults != NULL && *faults != '\0' ? faults : NULL;
    const char *gate = getenv("COFRE_SHIM_GATE_ATTRIBUTES");
    gate_attributes = gate != NULL && strcmp(gate, "1") == 0;
    const char *hide = getenv("COFRE_SHIM_HIDE_MECHANISMS");
    for (char *end = NULL; hide != NULL && *hide != '\0' && hidden_count < MAX_HIDDEN;
         hide = *end == ',' ? end + 1 : NULL) {
        CK_MECHANISM_TYPE type = strtoul(hide, &end, 0);
        if (end == hide) break;
        hidden[hidden_count++] = type;
    }
    for (size_t i = 0; i < OP_SLOTS; i++) ops[i].sign = ops[i].enc = ops[i].dec = NO_OP;
    void *module = dlopen(target, RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        load_error = CKR_GENERAL_ERROR;
        return;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK || real == NULL) {
        load_error = CKR_GENERAL_ERROR;
        return;
    }
    shim = *real;
    shim.C_Initialize = shim_Initialize;
    shim.C_Finalize = shim_Finalize;
    shim.C_GetInfo = shim_GetInfo;
    shim.C_CloseAllSessions = shim_CloseAllSessions;
    shim.C_GetMechanismList = shim_GetMechanismList;
    shim.C_GetMechanismInfo = shim_GetMechanismInfo;
    shim.C_OpenSession = shim_OpenSession;
    shim.C_WrapKey = shim_WrapKey;
    shim.C_UnwrapKey = shim_UnwrapKey;
    shim.C_GenerateKey = shim_GenerateKey;
    shim.C_GenerateKeyPair = shim_GenerateKeyPair;
    shim.C_CreateObject = shim_CreateObject;
    shim.C_EncryptInit = shim_EncryptInit;
    shim.C_DecryptInit = shim_DecryptInit;
    shim.C_SignInit = shim_SignInit;
    shim.C_VerifyInit = shim_VerifyInit;
    shim.C_DigestInit = shim_DigestInit;
    shim.C_DeriveKey = shim_DeriveKey;
    shim.C_SignUpdate = shim_SignUpdate;
    shim.C_EncryptUpdate = shim_EncryptUpdate;
    shim.C_DecryptUpdate = shim_DecryptUpdate;
    shim.C_CopyObject = shim_CopyObject;
    shim.C_InitToken = shim_InitToken;
    shim.C_InitPIN = shim_InitPIN;
    shim.C_SetPIN = shim_SetPIN;
    shim.C_GetOperationState = shim_GetOperationState;
    shim.C_SetOperationState = shim_SetOperationState;
    shim.C_GetObjectSize = shim_GetObjectSize;
    shim.C_SetAttributeValue = shim_SetAttributeValue;
    shim.C_DigestKey = shim_DigestKey;
    shim.C_SignRecoverInit = shim_SignRecoverInit;
    shim.C_SignRecover = shim_SignRecover;
    shim.C_VerifyRecoverInit = shim_VerifyRecoverInit;
    shim.C_VerifyRecover = shim_VerifyRecover;
    shim.C_DigestEncryptUpdate = shim_DigestEncryptUpdate;
    shim.C_DecryptDigestUpdate = shim_DecryptDigestUpdate;
    shim.C_SignEncryptUpdate = shim_SignEncryptUpdate;
    shim.C_DecryptVerifyUpdate = shim_DecryptVerifyUpdate;
    shim.C_SeedRandom = shim_SeedRandom;
    shim.C_GetFunctionStatus = shim_GetFunctionStatus;
    shim.C_CancelFunction = shim_CancelFunction;
    shim.C_WaitForSlotEvent = shim_WaitForSlotEvent;
    shim.C_GetSlotList = shim_GetSlotList;
    shim.C_GetSlotInfo = shim_GetSlotInfo;
    shim.C_GetTokenInfo = shim_GetTokenInfo;
    shim.C_CloseSession = shim_CloseSession;
    shim.C_GetSessionInfo = shim_GetSessionInfo;
    shim.C_Login = shim_Login;
    shim.C_Logout = shim_Logout;
    shim.C_DestroyObject = shim_DestroyObject;
    shim.C_GetAttributeValue = shim_GetAttributeValue;
    shim.C_FindObjectsInit = shim_FindObjectsInit;
    shim.C_FindObjects = shim_FindObjects;
    shim.C_FindObjectsFinal = shim_FindObjectsFinal;
    shim.C_Encrypt = shim_Encrypt;
    shim.C_Decrypt = shim_Decrypt;
    shim.C_Sign = shim_Sign;
    shim.C_GenerateRandom = shim_GenerateRandom;
    shim.C_SignFinal = shim_SignFinal;
    shim.C_EncryptFinal = shim_EncryptFinal;
    shim.C_DecryptFinal = shim_DecryptFinal;
    shim.C_Verify = shim_Verify;
    shim.C_VerifyUpdate = shim_VerifyUpdate;
    shim.C_VerifyFinal = shim_VerifyFinal;
    shim.C_Digest = shim_Digest;
    shim.C_DigestUpdate = shim_DigestUpdate;
    shim.C_DigestFinal = shim_DigestFinal;
}

/* Test control, not PKCS#11: change the latency, key-availability window and attribute gate at run time
 * (the harness calls it through ctypes on the already loaded module). */
void cofre_shim_configure(long new_latency_us, long new_availability_ms, int new_gate) {
    pthread_once(&once, load);
    latency_us = new_latency_us;
    gate_attributes = new_gate;
    pthread_mutex_lock(&pending_lock);
    availability_ms = new_availability_ms;
    memset(pending, 0, sizeof pending); /* keys created before now are available */
    pthread_mutex_unlock(&pending_lock);
}

/* Test control, not PKCS#11: how many C_Initialize calls this process has made (a
 * re-initialisation of the library shows as one more). */
long cofre_shim_initializations(void) {
    return __atomic_load_n(&initializations, __ATOMIC_RELAXED);
}

/* Test control, not PKCS#11: how many calls this process has sent as round trips. */
long cofre_shim_round_trips(void) {
    return __atomic_load_n(&round_trips, __ATOMIC_RELAXED);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (list == NULL) return CKR_ARGUMENTS_BAD;
    pthread_once(&once, load);
    if (load_error != CKR_OK) return load_error;
    shim.C_GetFunctionList = C_GetFunctionList;
    *list = &shim;
    return CKR_OK;
}
