/* The mirror record encoder's common case, in C (optional: record.py works without it).
 *
 * An Encoder writes the same bytes as record.py's Python path for an exchange that needs no
 * pattern applied: every header field known (from the Redactor's caches) or plain (ASCII; a
 * listed name, whose value becomes the replacement, or a value no pattern can match), each then
 * kept here as its finished JSON text; an ASCII path; UTF-8 bodies; all free of every pattern's
 * required literal (so no pattern can match them; see scan()); no query string, no error, not a
 * stream, nothing truncated, all three timestamps within the cached second. For anything else
 * it hands the exchange to the Python path (``fallback``), which also fills the caches.
 * Exchange is record.py's Exchange class in C. tests/test_mirror_native.py holds the two paths
 * (and the two Exchange classes) to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <strings.h>

#define FALLBACK 1 /* "not the common case": the Python path encodes it, no exception */
#define MAX_FIELDS 64
#define MAX_LITERALS 64 /* more: Redactor.native_caches is None */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int grow_slow(Buf *b, Py_ssize_t need) {
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + need) cap = b->len + need + 256;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int grow(Buf *b, Py_ssize_t need) { return b->len + need <= b->cap ? 0 : grow_slow(b, need); }

/* Inline: with a constant n (PUT), the copy is a few moves. */
static inline int put(Buf *b, const char *s, Py_ssize_t n) {
    if (grow(b, n)) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* String literals only: "" literal does not compile for a pointer, whose sizeof is not its length. */
#define PUT(b, literal) put((b), "" literal, (Py_ssize_t)sizeof("" literal) - 1)

static const char HEX[] = "0123456789abcdef";

/* Bytes a JSON string must escape: control characters, '"' and backslash. */
static unsigned char ESCAPE[256];

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define WORDWISE 1
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* The high bit of each of the eight bytes at p that is < 0x20, '"' or backslash -- and maybe of
 * some bytes after the first such one (borrows), never before it: the lowest bit set is exact. */
static inline uint64_t escape_mask(uint64_t x) {
    uint64_t quote = x ^ (ONES * '"'), backslash = x ^ (ONES * '\\');
    return (((x - ONES * 0x20) & ~x) | ((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash)) & HIGHS;
}
#endif

static inline char *escape_byte(char *o, unsigned char c) {
    *o++ = '\\';
    switch (c) {
    case '"': *o++ = '"'; break;
    case '\\': *o++ = '\\'; break;
    case '\b': *o++ = 'b'; break;
    case '\f': *o++ = 'f'; break;
    case '\n': *o++ = 'n'; break;
    case '\r': *o++ = 'r'; break;
    case '\t': *o++ = 't'; break;
    default:
        *o++ = 'u';
        *o++ = '0';
        *o++ = '0';
        *o++ = HEX[c >> 4];
        *o++ = HEX[c & 15];
    }
    return o;
}

/* A JSON string of UTF-8 bytes, escaped as msgspec escapes it. */
static int put_string_utf8(Buf *b, const char *s, Py_ssize_t n) {
    if (grow(b, n * 6 + 2 + 8)) return -1; /* + 8: the word copy below writes ahead */
    char *o = b->data + b->len;
    *o++ = '"';
    Py_ssize_t i = 0;
#ifdef WORDWISE
    /* Eight bytes at a time, copied before they are looked at: up to the first one that needs
     * escaping, the copy stands. */
    while (i + 8 <= n) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        memcpy(o, &x, 8);
        uint64_t mask = escape_mask(x);
        if (!mask) {
            i += 8;
            o += 8;
            continue;
        }
        int clean = __builtin_ctzll(mask) >> 3;
        i += clean;
        o = escape_byte(o + clean, (unsigned char)s[i++]);
    }
#endif
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (ESCAPE[c]) o = escape_byte(o, c);
        else *o++ = (char)c;
    }
    *o++ = '"';
    b->len = o - b->data;
    return 0;
}

/* A str as a JSON string; FALLBACK for anything else or a str UTF-8 cannot hold (surrogates). */
static int put_str(Buf *b, PyObject *s) {
    if (!PyUnicode_Check(s)) return FALLBACK;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) {
        PyErr_Clear();
        return FALLBACK;
    }
    return put_string_utf8(b, u, n);
}

static int put_str_or_null(Buf *b, PyObject *s) {
    return s == Py_None ? PUT(b, "null") : put_str(b, s);
}

/* Decimal digits of v (>= 0) ending at ``end``; returns where they start. */
static char *digits(char *end, unsigned long long v) {
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

static int put_int(Buf *b, long long v) {
    char tmp[24];
    char *end = tmp + sizeof tmp;
    char *start = digits(end, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v);
    if (v < 0) *--start = '-';
    return put(b, start, end - start);
}

/* Microseconds as milliseconds the way Python's repr prints micros / 1000: "2.9", "0.126", "3.0". */
static int put_ms(Buf *b, long long micros) {
    char tmp[32];
    char *end = tmp + sizeof tmp;
    unsigned long long a = micros < 0 ? 0ULL - (unsigned long long)micros : (unsigned long long)micros;
    unsigned frac = (unsigned)(a % 1000);
    char *start = end;
    *--start = (char)('0' + frac % 10);
    *--start = (char)('0' + frac / 10 % 10);
    *--start = (char)('0' + frac / 100);
    *--start = '.';
    start = digits(start, a / 1000);
    if (micros < 0) *--start = '-';
    /* Trailing zeros go, but one digit stays after the point. */
    Py_ssize_t n = end - start;
    if (frac % 10 == 0) n -= frac % 100 == 0 ? 2 : 1;
    return put(b, start, n);
}

static unsigned char LOWER[256], UPPER[256];

/* The patterns' required literals, indexed once per Encoder for scan(): what each byte means
 * (0 nothing, 1 a one-character literal in either case, 2 look closer: NUL, non-ASCII,
 * backslash), which lowercase pairs begin a longer literal (a 64K-bit set, and a short list for
 * the vector pass), and the literals chained by first character (head, next). */
#define VECTOR_PAIRS 8
#ifdef WORDWISE
typedef signed char v16 __attribute__((vector_size(16)));
#endif
typedef struct {
    PyObject *literals; /* tuple of lowercase ASCII bytes */
    unsigned char kind[256];
    signed char head[256], next[MAX_LITERALS];
    uint64_t pairs[65536 / 64];
    int vector_pairs;                  /* -1: too many, or one-character literals: bytewise only */
#ifdef WORDWISE
    v16 first[VECTOR_PAIRS], second[VECTOR_PAIRS]; /* the pairs, ORed with 0x20, in every lane */
#endif
} Scanner;

static void scanner_init(Scanner *sc, PyObject *literals) {
    sc->literals = literals;
    memset(sc->kind, 0, 0x80);
    memset(sc->kind + 0x80, 2, 0x80);
    sc->kind[0] = 2;
    sc->kind['\\'] = 2;
    memset(sc->head, -1, sizeof sc->head);
    memset(sc->pairs, 0, sizeof sc->pairs);
    sc->vector_pairs = 0;
    for (Py_ssize_t k = PyTuple_GET_SIZE(literals) - 1; k >= 0; k--) {
        PyObject *literal = PyTuple_GET_ITEM(literals, k);
        const unsigned char *l = (const unsigned char *)PyBytes_AS_STRING(literal);
        unsigned char c = l[0];
        sc->next[k] = sc->head[c];
        sc->head[c] = (signed char)k;
        if (PyBytes_GET_SIZE(literal) == 1) {
            if (c < 0x80 && sc->kind[c] != 2) sc->kind[c] = sc->kind[UPPER[c]] = 1;
            sc->vector_pairs = -1;
            continue;
        }
        unsigned pair = (unsigned)c << 8 | l[1];
        if (sc->pairs[pair >> 6] >> (pair & 63) & 1) continue; /* a pair already listed */
        sc->pairs[pair >> 6] |= 1ULL << (pair & 63);
        if (sc->vector_pairs >= 0 && sc->vector_pairs < VECTOR_PAIRS) {
#ifdef WORDWISE
            for (int lane = 0; lane < 16; lane++) {
                sc->first[sc->vector_pairs][lane] = (signed char)(c | 0x20);
                sc->second[sc->vector_pairs][lane] = (signed char)(l[1] | 0x20);
            }
#endif
            sc->vector_pairs++;
        } else
            sc->vector_pairs = -1;
    }
}

/* scan() at s[i]: FALLBACK, 2 for a non-ASCII byte (fine so far), else 0. */
static inline int scan_at(const Scanner *sc, const char *s, Py_ssize_t n, Py_ssize_t i, int escapes, int utf8) {
    unsigned char c = (unsigned char)s[i];
    if (sc->kind[c]) {
        if (sc->kind[c] == 1) return FALLBACK;
        if (c == '\\') {
            if (escapes && i + 1 < n && s[i + 1] == 'u') return FALLBACK;
        } else {
            if (c == 0 || !utf8) return FALLBACK;
            /* U+0130, U+0131, U+017F: letters a case-insensitive pattern matches as i, i, s */
            if ((c == 0xC4 || c == 0xC5) && i + 1 < n) {
                unsigned char d = (unsigned char)s[i + 1];
                if ((c == 0xC4 && (d == 0xB0 || d == 0xB1)) || (c == 0xC5 && d == 0xBF)) return FALLBACK;
            }
            if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x84 && (unsigned char)s[i + 2] == 0xAA)
                return FALLBACK; /* U+212A */
            return 2;
        }
    }
    if (i + 1 == n) return 0;
    unsigned pair = (unsigned)LOWER[c] << 8 | LOWER[(unsigned char)s[i + 1]];
    if (!(sc->pairs[pair >> 6] >> (pair & 63) & 1)) return 0;
    for (int k = sc->head[LOWER[c]]; k >= 0; k = sc->next[k]) {
        PyObject *literal = PyTuple_GET_ITEM(sc->literals, k);
        const unsigned char *l = (const unsigned char *)PyBytes_AS_STRING(literal);
        Py_ssize_t m = PyBytes_GET_SIZE(literal), j = 1;
        if (m > n - i) continue;
        while (j < m && LOWER[(unsigned char)s[i + j]] == l[j]) j++;
        if (j == m) return FALLBACK;
    }
    return 0;
}

/* FALLBACK when ``s[0:n]`` contains a literal in any case (the literals are lowercase: what
 * Redactor._may_match looks for in str.lower()), a NUL, or non-ASCII bytes unless ``utf8``
 * (bodies: then it must be valid UTF-8, as Python decodes it, and hold none of the four
 * characters a case-insensitive pattern matches as an ASCII letter: U+0130, U+0131, U+017F,
 * U+212A; any other non-ASCII character cannot be part of an ASCII literal either way). With
 * ``escapes``, also FALLBACK on a backslash-u (a body the Python path parses). One pass, sixteen
 * bytes at a time where it can: only the bytes that could begin a literal's first two
 * characters (either case; a superset) or need a closer look are looked at one by one. */
static int scan(const Scanner *sc, const char *s, Py_ssize_t n, int escapes, int utf8) {
    int non_ascii = 0, rc;
    Py_ssize_t i = 0;
#ifdef WORDWISE
    if (sc->vector_pairs >= 0) {
        int pairs = sc->vector_pairs;
        for (; i + 17 <= n; i += 16) {
            v16 x, y;
            memcpy(&x, s + i, 16);
            memcpy(&y, s + i + 1, 16);
            v16 lx = x | 0x20, ly = y | 0x20;
            v16 look = (x < 0) | (x == 0) | (x == '\\'); /* non-ASCII, NUL, backslash */
            for (int k = 0; k < pairs; k++) look |= (lx == sc->first[k]) & (ly == sc->second[k]);
            uint64_t half[2];
            memcpy(half, &look, 16);
            for (int h = 0; h < 2; h++) {
                while (half[h]) {
                    Py_ssize_t at = i + h * 8 + (__builtin_ctzll(half[h]) >> 3);
                    half[h] &= half[h] - 1; /* the lowest set bit goes; its byte's other bits too: */
                    half[h] &= ~(0xFFULL << (((at - i) & 7) * 8));
                    if ((rc = scan_at(sc, s, n, at, escapes, utf8)) == FALLBACK) return FALLBACK;
                    if (rc == 2) non_ascii = 1;
                }
            }
        }
    }
#endif
    for (; i < n; i++) {
        if ((rc = scan_at(sc, s, n, i, escapes, utf8)) == FALLBACK) return FALLBACK;
        if (rc == 2) non_ascii = 1;
    }
    if (non_ascii) { /* exactly the text Python's strict UTF-8 decoder accepts */
        PyObject *text = PyUnicode_DecodeUTF8(s, n, "strict");
        if (text == NULL) {
            if (PyErr_ExceptionMatches(PyExc_MemoryError)) return -1;
            PyErr_Clear();
            return FALLBACK;
        }
        Py_DECREF(text);
    }
    return 0;
}

/* Header fields as finished JSON text (``"name":"redacted value"``), keyed by the raw bytes of
 * the field: after the first sighting, a field costs a hash of its bytes, one compare and a
 * copy. Filled from the Redactor's caches or by new_field(), bounded like those caches (cleared
 * when full), and probed a bounded number of slots with a per-process seed,
 * so crafted fields can slow a lookup by a few compares at most (a miss goes the Python way). */
typedef struct {
    uint64_t hash;      /* 0: an empty slot */
    uint64_t name_hash; /* of the JSON name: a repeated header makes the record the Python path's */
    char *key;          /* raw name, then raw value (a listed header's key: its raw name alone) */
    char *text;         /* the JSON member */
    uint32_t name_len, value_len, text_len;
    unsigned char listed, stream;
} Field;

#define SLOTS 2048 /* a power of two */
#define MAX_KEPT 1024 /* fields kept before the table is cleared */
#define PROBES 8

typedef struct {
    Field *slots; /* NULL until the first field */
    Py_ssize_t count;
    uint64_t seed;
} Table;

static inline uint64_t hash_bytes(uint64_t h, const char *s, Py_ssize_t n) {
    const uint64_t k = 0x9E3779B97F4A7C15ULL;
    h = (h ^ (uint64_t)n) * k;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * k;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, (size_t)n);
        h = (h ^ w) * k;
        h ^= h >> 29;
    }
    return h;
}

static inline uint64_t finish_hash(uint64_t h) {
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 32;
    return h | 1; /* never 0, the empty slot */
}

static void table_clear(Table *t) {
    if (t->slots == NULL) return;
    for (Py_ssize_t i = 0; i < SLOTS; i++) {
        if (t->slots[i].hash) PyMem_Free(t->slots[i].key);
    }
    memset(t->slots, 0, SLOTS * sizeof(Field));
    t->count = 0;
}

/* The field with this key, or NULL; ``*free_slot`` is where it could go (NULL: nowhere near). */
static Field *table_find(Table *t, uint64_t hash, int listed, const char *name, Py_ssize_t name_len, const char *value,
                         Py_ssize_t value_len, Field **free_slot) {
    *free_slot = NULL;
    if (t->slots == NULL) return NULL;
    for (int p = 0; p < PROBES; p++) {
        Field *f = &t->slots[(hash + (uint64_t)p) & (SLOTS - 1)];
        if (!f->hash) {
            *free_slot = f;
            return NULL;
        }
        if (f->hash == hash && f->listed == listed && f->name_len == name_len && f->value_len == value_len &&
            memcmp(f->key, name, (size_t)name_len) == 0 &&
            (value_len == 0 || memcmp(f->key + name_len, value, (size_t)value_len) == 0))
            return f;
    }
    return NULL;
}

/* A new field in ``slot`` (from table_find); its text is copied. NULL only when out of memory. */
static Field *table_add(Table *t, Field *slot, uint64_t hash, int listed, const char *name, Py_ssize_t name_len,
                        const char *value, Py_ssize_t value_len, const char *text, Py_ssize_t text_len,
                        Py_ssize_t json_name_len, int stream) {
    char *key = PyMem_Malloc((size_t)(name_len + value_len + text_len) + 1);
    if (key == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(key, name, (size_t)name_len);
    memcpy(key + name_len, value, (size_t)value_len);
    memcpy(key + name_len + value_len, text, (size_t)text_len);
    slot->hash = hash;
    slot->name_hash = finish_hash(hash_bytes(t->seed ^ 0x5bd1e995ULL, text, json_name_len));
    slot->key = key;
    slot->text = key + name_len + value_len;
    slot->name_len = (uint32_t)name_len;
    slot->value_len = (uint32_t)value_len;
    slot->text_len = (uint32_t)text_len;
    slot->listed = (unsigned char)listed;
    slot->stream = (unsigned char)stream;
    t->count++;
    return slot;
}

/* The cached second: [its start in epoch seconds (float), "YYYY-MM-DDTHH:MM:SS." (str)]. */
typedef struct {
    PyObject_HEAD
    PyObject *fields;      /* dict: (raw name, raw value) -> (name, redacted value), Redactor's */
    PyObject *listed;      /* dict: raw name of a listed header -> name, Redactor's */
    PyObject *replacement; /* str */
    PyObject *literals;    /* tuple of bytes */
    PyObject *header_names; /* frozenset: the listed header names, lowercase */
    PyObject *instance;    /* str */
    PyObject *second;      /* list, record._second */
    PyObject *model_of;    /* callable: request body -> model or None */
    Py_ssize_t request_cap;
    Scanner scanner;
    Table table;
    Buf out, request_headers, response_headers, joined; /* reused from record to record */
} Encoder;

#define NAME_SEED 0x5bd1e995ULL
#define LISTED_SEED 0xC2B2AE3D27D4EB4FULL

/* ``"name":"value"`` of a field as Python's caches have it (value: the redacted value, or the
 * replacement for a listed header). */
static int render_field(Buf *b, PyObject *name, PyObject *value, Py_ssize_t *json_name_len, int *stream) {
    int rc;
    Py_ssize_t start = b->len;
    if ((rc = put_str(b, name))) return rc;
    *json_name_len = b->len - start;
    if ((rc = PUT(b, ":")) || (rc = put_str(b, value))) return rc;
    *stream = 0;
    if (PyUnicode_CompareWithASCIIString(name, "content-type") == 0) {
        Py_ssize_t n;
        const char *v = PyUnicode_AsUTF8AndSize(value, &n);
        if (v == NULL) {
            PyErr_Clear();
            return FALLBACK;
        }
        *stream = n >= 17 && strncasecmp(v, "text/event-stream", 17) == 0;
    }
    return 0;
}

/* A field neither the table nor Python's caches have, redacted as Redactor.headers redacts it:
 * its name lowercased; a listed name's value replaced; a value kept when scan() proves no
 * pattern can match it. ASCII fields only (the Python path takes the rest). New references. */
static int new_field(Encoder *e, const char *name, Py_ssize_t name_len, const char *value, Py_ssize_t value_len,
                     PyObject **field_name, PyObject **field_value, int *listed) {
    PyObject *lowered = PyUnicode_New(name_len, 127);
    if (lowered == NULL) return -1;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(lowered);
    for (Py_ssize_t i = 0; i < name_len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 0x80) {
            Py_DECREF(lowered);
            return FALLBACK;
        }
        out[i] = LOWER[c];
    }
    int is_listed = PySet_Contains(e->header_names, lowered);
    if (is_listed < 0) {
        PyErr_Clear();
        Py_DECREF(lowered);
        return FALLBACK;
    }
    if (is_listed) {
        *field_name = lowered;
        *field_value = Py_NewRef(e->replacement);
        *listed = 1;
        return 0;
    }
    int rc = scan(&e->scanner, value, value_len, 0, 0); /* ASCII and no literal, or FALLBACK */
    if (rc == 0 && (*field_value = PyUnicode_FromStringAndSize(value, value_len)) == NULL) rc = -1;
    if (rc) {
        Py_DECREF(lowered);
        return rc;
    }
    *field_name = lowered;
    *listed = 0;
    return 0;
}

/* One header field's JSON member. FALLBACK for a field Python has not seen (it decodes, redacts
 * and caches it) or one this code does not read. ``name_hash`` identifies its name; ``stream``
 * is set for an event stream's content-type. */
static int put_field(Encoder *e, Buf *b, PyObject *pair, uint64_t *name_hash, int *stream) {
    PyObject *raw_name = PyTuple_GET_ITEM(pair, 0), *raw_value = PyTuple_GET_ITEM(pair, 1);
    Table *t = &e->table;
    int cacheable = PyBytes_CheckExact(raw_name) && PyBytes_CheckExact(raw_value) &&
                    PyBytes_GET_SIZE(raw_name) < (1 << 24) && PyBytes_GET_SIZE(raw_value) < (1 << 24);
    const char *name = NULL, *value = NULL;
    Py_ssize_t name_len = 0, value_len = 0;
    uint64_t hash = 0, listed_hash = 0;
    Field *slot = NULL, *listed_slot = NULL;
    if (cacheable) {
        name = PyBytes_AS_STRING(raw_name);
        name_len = PyBytes_GET_SIZE(raw_name);
        value = PyBytes_AS_STRING(raw_value);
        value_len = PyBytes_GET_SIZE(raw_value);
        hash = finish_hash(hash_bytes(hash_bytes(t->seed, name, name_len), value, value_len));
        Field *f = table_find(t, hash, 0, name, name_len, value, value_len, &slot);
        if (f == NULL) {
            listed_hash = finish_hash(hash_bytes(t->seed ^ LISTED_SEED, name, name_len));
            f = table_find(t, listed_hash, 1, name, name_len, NULL, 0, &listed_slot);
        }
        if (f != NULL) {
            *name_hash = f->name_hash;
            *stream |= f->stream;
            return put(b, f->text, f->text_len);
        }
    } else {
        /* Exact bytes or str only: hashing and comparing them runs no Python code, so the
         * borrowed references below stay valid. */
        for (int k = 0; k < 2; k++) {
            PyObject *item = PyTuple_GET_ITEM(pair, k);
            if (!PyBytes_CheckExact(item) && !PyUnicode_CheckExact(item)) return FALLBACK;
        }
    }
    /* Not known here yet: Python's caches, else a new field. */
    PyObject *field_name, *field_value, *owned_name = NULL, *owned_value = NULL;
    int listed = 0;
    PyObject *field = PyDict_GetItemWithError(e->fields, pair);
    if (field != NULL) {
        if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 2) return FALLBACK;
        field_name = PyTuple_GET_ITEM(field, 0);
        field_value = PyTuple_GET_ITEM(field, 1);
    } else {
        if (PyErr_Occurred()) { /* an unhashable field */
            PyErr_Clear();
            return FALLBACK;
        }
        field_name = PyDict_GetItemWithError(e->listed, raw_name);
        if (field_name != NULL) {
            field_value = e->replacement;
            listed = 1;
        } else {
            if (PyErr_Occurred()) {
                PyErr_Clear();
                return FALLBACK;
            }
            if (!cacheable) return FALLBACK; /* str fields: the Python path */
            int rc = new_field(e, name, name_len, value, value_len, &owned_name, &owned_value, &listed);
            if (rc) return rc;
            field_name = owned_name;
            field_value = owned_value;
        }
    }
    Buf text = {NULL, 0, 0};
    Py_ssize_t json_name_len = 0;
    int is_stream = 0, rc = FALLBACK;
    if (PyUnicode_Check(field_name) && PyUnicode_Check(field_value))
        rc = render_field(&text, field_name, field_value, &json_name_len, &is_stream);
    if (rc == 0) {
        *name_hash = finish_hash(hash_bytes(t->seed ^ NAME_SEED, text.data, json_name_len));
        *stream |= is_stream;
        rc = put(b, text.data, text.len);
    }
    if (rc == 0 && cacheable) {
        if (t->slots == NULL || t->count >= MAX_KEPT) {
            if (t->slots == NULL) {
                t->slots = PyMem_Calloc(SLOTS, sizeof(Field));
                if (t->slots == NULL) rc = -1;
            } else
                table_clear(t);
            slot = listed_slot = NULL;
        }
        Field *to = listed ? listed_slot : slot;
        uint64_t key_hash = listed ? listed_hash : hash;
        if (rc == 0 && to == NULL) table_find(t, key_hash, listed, name, name_len, value, listed ? 0 : value_len, &to);
        if (rc == 0 && to != NULL &&
            table_add(t, to, key_hash, listed, name, name_len, value, listed ? 0 : value_len, text.data, text.len,
                      json_name_len, is_stream) == NULL)
            rc = -1;
        if (rc < 0) {
            PyErr_Clear(); /* no room to remember it: the record is still right */
            rc = 0;
        }
    }
    PyMem_Free(text.data);
    Py_XDECREF(owned_name);
    Py_XDECREF(owned_value);
    return rc;
}

/* A headers object. ``stream`` is set when content-type is an event stream. */
static int put_headers(Encoder *e, Buf *b, PyObject *pairs, int *stream) {
    PyObject *seq = PySequence_Fast(pairs, "headers");
    if (seq == NULL) {
        PyErr_Clear();
        return FALLBACK;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    uint64_t names[MAX_FIELDS];
    int rc = FALLBACK;
    if (count > MAX_FIELDS) goto out;
    if ((rc = PUT(b, "{"))) goto out;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        rc = FALLBACK;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) goto out;
        if ((i && (rc = PUT(b, ","))) || (rc = put_field(e, b, pair, &names[i], stream))) goto out;
        for (Py_ssize_t j = 0; j < i; j++) {
            if (names[j] == names[i]) { /* a repeated name: Python joins the values */
                rc = FALLBACK;
                goto out;
            }
        }
    }
    rc = PUT(b, "}");
out:
    Py_DECREF(seq);
    return rc;
}

/* ``"body":...,"body_encoding":"utf-8","bytes":N,"body_truncated":false`` for a whole body. */
static int put_body(Encoder *e, Buf *b, const char *s, Py_ssize_t n, long long total) {
    int rc;
    if (n == 0) rc = PUT(b, "\"body\":null");
    else if ((rc = scan(&e->scanner, s, n, 1, 1)) == 0 && (rc = PUT(b, "\"body\":")) == 0) rc = put_string_utf8(b, s, n);
    if (rc) return rc;
    if ((rc = PUT(b, ",\"body_encoding\":\"utf-8\",\"bytes\":")) || (rc = put_int(b, total))) return rc;
    return PUT(b, ",\"body_truncated\":false");
}

/* Microseconds of ``at - start`` rounded as record.py rounds durations (int(x * 1e6 + 0.5)). */
static long long micros_between(double at, double start) { return (long long)((at - start) * 1000000.0 + 0.5); }

static int put_stamp(Buf *b, const char *prefix, Py_ssize_t prefix_len, long long micros) {
    char tmp[8] = {(char)('0' + micros / 100000), (char)('0' + micros / 10000 % 10), (char)('0' + micros / 1000 % 10),
                   (char)('0' + micros / 100 % 10),    (char)('0' + micros / 10 % 10),    (char)('0' + micros % 10),
                   'Z',                                '"'};
    int rc;
    if ((rc = PUT(b, "\"")) || (rc = put(b, prefix, prefix_len))) return rc;
    return put(b, tmp, 8);
}

/* An attempt offset: (x - start) * 1e6 + 0.5, floored, as record._attempts computes it; null for
 * None and 0.0 (falsy there). */
static int put_offset(Buf *b, PyObject *value, double start) {
    if (value == Py_None) return PUT(b, "null");
    double x = PyFloat_AsDouble(value);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;
    }
    if (x == 0.0) return PUT(b, "null");
    return put_ms(b, (long long)floor((x - start) * 1000000.0 + 0.5));
}

static PyObject *S_backend, *S_name, *S_outcome, *S_value, *S_status, *S_started, *S_headers_at, *S_ended,
    *S_received_wall;

enum {
    A_ID, A_REQUEST_ID, A_RECEIVED, A_FIRST_BYTE, A_DONE, A_CLIENT, A_METHOD, A_RAW_PATH, A_QUERY,
    A_REQUEST_BODY, A_STATUS, A_ENDED, A_BACKEND, A_ERROR, A_ATTEMPTS, A_REQUEST_HEADERS, A_RESPONSE_HEADERS,
    A_CHUNKS, A_RESPONSE_BYTES, A_KEPT, A_COUNT
};

static int put_attempts(Buf *b, PyObject *attempts, double start) {
    if (!PyList_Check(attempts)) return FALLBACK;
    int rc;
    if ((rc = PUT(b, "["))) return rc;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(attempts); i++) {
        PyObject *a = PyList_GET_ITEM(attempts, i);
        PyObject *backend = NULL, *name = NULL, *outcome = NULL, *value = NULL, *status = NULL, *started = NULL,
                 *headers_at = NULL, *ended = NULL;
        rc = -1;
        if (!(backend = PyObject_GetAttr(a, S_backend)) || !(name = PyObject_GetAttr(backend, S_name)) ||
            !(outcome = PyObject_GetAttr(a, S_outcome)) || !(status = PyObject_GetAttr(a, S_status)) ||
            !(started = PyObject_GetAttr(a, S_started)) || !(headers_at = PyObject_GetAttr(a, S_headers_at)) ||
            !(ended = PyObject_GetAttr(a, S_ended)))
            goto next;
        if (outcome != Py_None && !(value = PyObject_GetAttr(outcome, S_value))) goto next;
        double t = PyFloat_AsDouble(started);
        if (t == -1.0 && PyErr_Occurred()) goto next;
        if ((i && (rc = PUT(b, ","))) || (rc = PUT(b, "{\"backend\":")) || (rc = put_str(b, name)) ||
            (rc = PUT(b, ",\"outcome\":")) || (rc = put_str_or_null(b, value ? value : Py_None)) ||
            (rc = PUT(b, ",\"status\":")))
            goto next;
        if (status == Py_None) rc = PUT(b, "null");
        else if (PyLong_CheckExact(status)) {
            long long code = PyLong_AsLongLong(status);
            rc = code == -1 && PyErr_Occurred() ? -1 : put_int(b, code);
        } else
            rc = FALLBACK;
        if (rc || (rc = PUT(b, ",\"start_ms\":")) || (rc = put_ms(b, (long long)floor((t - start) * 1000000.0 + 0.5))) ||
            (rc = PUT(b, ",\"headers_ms\":")) || (rc = put_offset(b, headers_at, start)) ||
            (rc = PUT(b, ",\"end_ms\":")) || (rc = put_offset(b, ended, start)))
            goto next;
        rc = PUT(b, "}");
    next:
        Py_XDECREF(backend);
        Py_XDECREF(name);
        Py_XDECREF(outcome);
        Py_XDECREF(value);
        Py_XDECREF(status);
        Py_XDECREF(started);
        Py_XDECREF(headers_at);
        Py_XDECREF(ended);
        if (rc < 0 && PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
            PyErr_Clear();
            rc = FALLBACK;
        }
        if (rc) return rc;
    }
    return PUT(b, "]");
}

/* What the encoder reads of an exchange: borrowed references and plain numbers. */
typedef struct {
    PyObject *id, *request_id, *client, *method, *raw_path, *query, *request_body, *ended, *backend, *error,
        *attempts, *request_headers, *response_headers, *chunks, *first_byte;
    double received, done;
    long long status, response_bytes, kept;
} View;

/* record.Exchange in C: what the request path fills (see record.py's class, which this one
 * replaces when the module is built: the same attributes, constructor and methods). */
typedef struct {
    PyObject_HEAD
    PyObject *id, *request_id, *method, *raw_path, *query, *request_headers, *client, *request_body,
        *response_headers, *first_byte, *chunks, *tail, *ended, *error, *backend, *attempts;
    double received, received_wall, done;
    Py_ssize_t body_cap, kept, response_bytes, status;
} Exchange;

static PyTypeObject ExchangeType;

static int view_of_exchange(View *v, Exchange *x) {
    v->id = x->id;
    v->request_id = x->request_id;
    v->client = x->client;
    v->method = x->method;
    v->raw_path = x->raw_path;
    v->query = x->query;
    v->request_body = x->request_body;
    v->ended = x->ended;
    v->backend = x->backend;
    v->error = x->error;
    v->attempts = x->attempts;
    v->request_headers = x->request_headers;
    v->response_headers = x->response_headers;
    v->chunks = x->chunks;
    v->first_byte = x->first_byte;
    v->received = x->received;
    v->done = x->done;
    v->status = x->status;
    v->response_bytes = x->response_bytes;
    v->kept = x->kept;
    /* An attribute deleted from Python: the Python path reports it. */
    PyObject *const held[] = {v->id,         v->request_id, v->client,   v->method,          v->raw_path,
                              v->query,      v->request_body, v->ended,  v->backend,         v->error,
                              v->attempts,   v->request_headers, v->response_headers, v->chunks, v->first_byte};
    for (size_t i = 0; i < sizeof held / sizeof held[0]; i++) {
        if (held[i] == NULL) return FALLBACK;
    }
    return 0;
}

static PyObject *names_[A_COUNT];

/* The view of any other object with the attributes (record.py's class): new references in
 * ``a``. FALLBACK when one is missing or a number is not one. */
static int view_of_object(View *v, PyObject *o, PyObject **a) {
    for (int i = 0; i < A_COUNT; i++) {
        if ((a[i] = PyObject_GetAttr(o, names_[i])) == NULL) {
            PyErr_Clear();
            return FALLBACK;
        }
    }
    if (!PyLong_CheckExact(a[A_STATUS]) || !PyLong_CheckExact(a[A_RESPONSE_BYTES]) || !PyLong_CheckExact(a[A_KEPT]))
        return FALLBACK;
    v->id = a[A_ID];
    v->request_id = a[A_REQUEST_ID];
    v->client = a[A_CLIENT];
    v->method = a[A_METHOD];
    v->raw_path = a[A_RAW_PATH];
    v->query = a[A_QUERY];
    v->request_body = a[A_REQUEST_BODY];
    v->ended = a[A_ENDED];
    v->backend = a[A_BACKEND];
    v->error = a[A_ERROR];
    v->attempts = a[A_ATTEMPTS];
    v->request_headers = a[A_REQUEST_HEADERS];
    v->response_headers = a[A_RESPONSE_HEADERS];
    v->chunks = a[A_CHUNKS];
    v->first_byte = a[A_FIRST_BYTE];
    v->status = PyLong_AsLongLong(a[A_STATUS]);
    v->response_bytes = PyLong_AsLongLong(a[A_RESPONSE_BYTES]);
    v->kept = PyLong_AsLongLong(a[A_KEPT]);
    v->received = PyFloat_AsDouble(a[A_RECEIVED]);
    v->done = PyFloat_AsDouble(a[A_DONE]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;
    }
    return 0;
}

static int put_record(Encoder *e, Buf *b, const View *v, double wall, PyObject *model) {
    int rc;
    /* What only the Python path handles. */
    if (!PyBytes_Check(v->query) || PyBytes_GET_SIZE(v->query) != 0) return FALLBACK;
    if (v->error != Py_None || v->first_byte == Py_None) return FALLBACK;
    if (!PyBytes_Check(v->raw_path) || !PyBytes_Check(v->request_body) || !PyList_Check(v->chunks)) return FALLBACK;
    long long response_bytes = v->response_bytes, status = v->status;
    if (response_bytes > v->kept || PyBytes_GET_SIZE(v->request_body) > e->request_cap) return FALLBACK;
    PyObject *second = e->second;
    if (!PyList_CheckExact(second) || PyList_GET_SIZE(second) != 2) return FALLBACK;
    PyObject *prefix_str = PyList_GET_ITEM(second, 1);
    if (!PyUnicode_IS_COMPACT_ASCII(prefix_str)) return FALLBACK;
    const char *prefix = (const char *)PyUnicode_DATA(prefix_str);
    Py_ssize_t prefix_len = PyUnicode_GET_LENGTH(prefix_str);
    double sec0 = PyFloat_AsDouble(PyList_GET_ITEM(second, 0)), received = v->received, done = v->done,
           first_byte = PyFloat_AsDouble(v->first_byte);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;
    }
    long long at = (long long)((wall - sec0) * 1000000.0 + 0.5);
    long long latency = micros_between(done, received), ttfb = micros_between(first_byte, received);
    if (at < 0 || at >= 1000000 || at + latency < 0 || at + latency >= 1000000 || at + ttfb < 0 ||
        at + ttfb >= 1000000)
        return FALLBACK; /* the Python path moves the cached second */

    /* Headers first: a response that turns out to be a stream is the Python path's. */
    Buf *request_headers = &e->request_headers, *response_headers = &e->response_headers;
    request_headers->len = response_headers->len = 0;
    int stream = 0, ignored = 0;
    if ((rc = put_headers(e, response_headers, v->response_headers, &stream)) == 0 && !stream)
        rc = put_headers(e, request_headers, v->request_headers, &ignored);
    if (stream && !rc) rc = FALLBACK;
    if (rc) return rc;

    const char *path = PyBytes_AS_STRING(v->raw_path);
    Py_ssize_t path_len = PyBytes_GET_SIZE(v->raw_path);
    if ((rc = scan(&e->scanner, path, path_len, 0, 0))) return rc; /* latin-1 in Python: ASCII only here */

    if ((rc = PUT(b, "{\"schema\":1,\"id\":")) || (rc = put_str(b, v->id)) || (rc = PUT(b, ",\"request_id\":")) ||
        (rc = put_str(b, v->request_id)) || (rc = PUT(b, ",\"instance\":")) || (rc = put_str(b, e->instance)) ||
        (rc = PUT(b, ",\"received_at\":")) || (rc = put_stamp(b, prefix, prefix_len, at)) ||
        (rc = PUT(b, ",\"first_byte_at\":")) || (rc = put_stamp(b, prefix, prefix_len, at + ttfb)) ||
        (rc = PUT(b, ",\"done_at\":")) || (rc = put_stamp(b, prefix, prefix_len, at + latency)) ||
        (rc = PUT(b, ",\"latency_ms\":")) || (rc = put_ms(b, latency)) || (rc = PUT(b, ",\"ttfb_ms\":")) ||
        (rc = put_ms(b, ttfb)) || (rc = PUT(b, ",\"client\":")) || (rc = put_str_or_null(b, v->client)) ||
        (rc = PUT(b, ",\"method\":")) || (rc = put_str(b, v->method)) || (rc = PUT(b, ",\"path\":")) ||
        (rc = put_string_utf8(b, path, path_len)) || (rc = PUT(b, ",\"query\":\"\",\"model\":")) ||
        (rc = put_str_or_null(b, model)) || (rc = PUT(b, ",\"status\":")) ||
        (rc = put_int(b, status)) || (rc = PUT(b, ",\"ended\":")) ||
        (rc = put_str(b, v->ended)) || (rc = PUT(b, ",\"backend\":")) || (rc = put_str_or_null(b, v->backend)) ||
        (rc = PUT(b, ",\"error\":null,\"attempts\":")) || (rc = put_attempts(b, v->attempts, received)) ||
        (rc = PUT(b, ",\"request\":{\"headers\":")) || (rc = put(b, request_headers->data, request_headers->len)) ||
        (rc = PUT(b, ",")))
        return rc;
    if ((rc = put_body(e, b, PyBytes_AS_STRING(v->request_body), PyBytes_GET_SIZE(v->request_body),
                       PyBytes_GET_SIZE(v->request_body))))
        return rc;
    if ((rc = PUT(b, "},\"response\":{\"headers\":")) || (rc = put(b, response_headers->data, response_headers->len)) ||
        (rc = PUT(b, ",")))
        return rc;

    PyObject *chunks = v->chunks;
    Py_ssize_t nchunks = PyList_GET_SIZE(chunks);
    if (nchunks == 1 && PyBytes_Check(PyList_GET_ITEM(chunks, 0))) {
        PyObject *chunk = PyList_GET_ITEM(chunks, 0);
        rc = put_body(e, b, PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), response_bytes);
    } else {
        Buf *joined = &e->joined;
        joined->len = 0;
        rc = 0;
        for (Py_ssize_t i = 0; i < nchunks && !rc; i++) {
            PyObject *chunk = PyList_GET_ITEM(chunks, i);
            rc = PyBytes_Check(chunk) ? put(joined, PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk)) : FALLBACK;
        }
        if (!rc) rc = put_body(e, b, joined->data, joined->len, response_bytes);
    }
    if (rc) return rc;
    return PUT(b, ",\"stream\":false,\"text\":null,\"usage\":null}}");
}

/* The line for one exchange (received at ``wall``, or at its received_wall when ``wall`` is NaN),
 * Py_None when it is the Python path's, NULL with an exception when out of memory. ``held`` gets
 * the bytes the exchange holds as the memory queue counts them, when it can tell. */
static PyObject *encode_one(Encoder *e, PyObject *exchange, double wall, double offset, long long *held) {
    PyObject *a[A_COUNT] = {NULL};
    PyObject *model = NULL, *result = NULL;
    View v;
    int rc = 0;
    if (Py_IS_TYPE(exchange, &ExchangeType)) rc = view_of_exchange(&v, (Exchange *)exchange);
    else rc = view_of_object(&v, exchange, a);
    if (rc == 0) {
        if (held != NULL && PyBytes_Check(v.request_body)) *held = PyBytes_GET_SIZE(v.request_body) + v.kept;
        if (isnan(wall)) wall = v.received + offset;
    }
    if (rc == 0 && PyBytes_Check(v.request_body)) {
        /* The model a JSON body names, as record._model finds it (only bodies that mention one). */
        const char *body = PyBytes_AS_STRING(v.request_body);
        Py_ssize_t n = PyBytes_GET_SIZE(v.request_body);
        if (n >= 7 && memmem(body, (size_t)n, "\"model\"", 7) != NULL) {
            model = PyObject_CallOneArg(e->model_of, v.request_body);
            if (model == NULL) rc = -1;
        }
    }
    Buf *b = &e->out;
    b->len = 0;
    if (rc == 0) rc = put_record(e, b, &v, wall, model ? model : Py_None);
    for (int i = 0; i < A_COUNT; i++) Py_XDECREF(a[i]);
    Py_XDECREF(model);
    if (rc < 0 && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        /* An exchange this code did not expect (a missing attribute, an odd type): the Python
         * path encodes it, or reports it. */
        PyErr_Clear();
        rc = FALLBACK;
    }
    if (rc == 0) result = PyBytes_FromStringAndSize(b->data, b->len);
    else if (rc == FALLBACK) result = Py_NewRef(Py_None);
    if (b->cap > (1 << 20)) { /* a large record: do not keep its buffer */
        PyMem_Free(b->data);
        b->data = NULL;
        b->len = b->cap = 0;
    }
    return result;
}

PyDoc_STRVAR(line_doc, "line(exchange)\n--\n\nThe record line of an exchange whose received_wall is set, or None: "
                       "the Python path's record.");

static PyObject *Encoder_line(Encoder *e, PyObject *exchange) {
    PyObject *wall_obj = PyObject_GetAttr(exchange, S_received_wall);
    if (wall_obj == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    double wall = PyFloat_AsDouble(wall_obj);
    Py_DECREF(wall_obj);
    if (wall == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return encode_one(e, exchange, wall, 0.0, NULL);
}

PyDoc_STRVAR(batch_doc,
             "batch(exchanges, lines, wall_offset, fallback)\n--\n\n"
             "Append the record line of each exchange (a list) to lines, in order, receipt times taken as\n"
             "received + wall_offset; an exchange this encoder does not take goes to fallback(exchange),\n"
             "which returns its line or None (not recorded). Returns the bytes appended minus the bytes\n"
             "the exchanges held (request body and kept response).");

static PyObject *Encoder_batch(Encoder *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "batch(exchanges: list, lines: list, wall_offset: float, fallback)");
        return NULL;
    }
    PyObject *exchanges = args[0], *lines = args[1], *fallback = args[3];
    double offset = PyFloat_AsDouble(args[2]);
    if (offset == -1.0 && PyErr_Occurred()) return NULL;
    long long change = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(exchanges); i++) {
        PyObject *exchange = Py_NewRef(PyList_GET_ITEM(exchanges, i));
        long long held = 0;
        PyObject *line = encode_one(e, exchange, NAN, offset, &held);
        if (line == NULL) PyErr_Clear(); /* out of memory here: the Python path may manage */
        if (line == NULL || line == Py_None) {
            Py_XDECREF(line);
            line = PyObject_CallOneArg(fallback, exchange);
        }
        Py_DECREF(exchange);
        if (line == NULL) return NULL;
        change -= held;
        if (line != Py_None) {
            if (!PyBytes_Check(line)) {
                Py_DECREF(line);
                PyErr_SetString(PyExc_TypeError, "batch(): fallback must return bytes or None");
                return NULL;
            }
            change += PyBytes_GET_SIZE(line);
            if (PyList_Append(lines, line) < 0) {
                Py_DECREF(line);
                return NULL;
            }
        }
        Py_DECREF(line);
    }
    return PyLong_FromLongLong(change);
}

static PyMethodDef Encoder_methods[] = {
    {"line", (PyCFunction)Encoder_line, METH_O, line_doc},
    {"batch", (PyCFunction)(void (*)(void))Encoder_batch, METH_FASTCALL, batch_doc},
    {NULL, NULL, 0, NULL},
};

/* Every object an Encoder holds, for traverse and clear. */
#define ENCODER_OBJECTS(apply)                                                                                     \
    apply(e->fields);                                                                                              \
    apply(e->listed);                                                                                              \
    apply(e->replacement);                                                                                         \
    apply(e->literals);                                                                                            \
    apply(e->header_names);                                                                                        \
    apply(e->instance);                                                                                            \
    apply(e->second);                                                                                              \
    apply(e->model_of)

static int Encoder_traverse(Encoder *e, visitproc visit, void *arg) {
    ENCODER_OBJECTS(Py_VISIT);
    return 0;
}

static int Encoder_clear(Encoder *e) {
    ENCODER_OBJECTS(Py_CLEAR);
    return 0;
}

static void Encoder_dealloc(Encoder *e) {
    PyObject_GC_UnTrack(e);
    Encoder_clear(e);
    table_clear(&e->table);
    PyMem_Free(e->table.slots);
    PyMem_Free(e->out.data);
    PyMem_Free(e->request_headers.data);
    PyMem_Free(e->response_headers.data);
    PyMem_Free(e->joined.data);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

PyDoc_STRVAR(Encoder_doc,
             "Encoder(fields, listed, replacement, literals, header_names, instance, second, request_cap, model_of,\n"
             "seed)\n--\n\n"
             "Record lines for the common case: see the module's source comment. fields, listed,\n"
             "replacement, literals and header_names are Redactor.native_caches; second is record._second; model_of\n"
             "finds a request body's model; seed (an int) keys the header table's hash.");

static PyObject *Encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *fields, *listed, *replacement, *literals, *header_names, *instance, *second, *model_of;
    Py_ssize_t request_cap;
    unsigned long long seed;
    static char *keywords[] = {"fields", "listed", "replacement", "literals", "header_names", "instance", "second",
                               "request_cap", "model_of", "seed", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!UO!O!UO!nOK:Encoder", keywords, &PyDict_Type, &fields,
                                     &PyDict_Type, &listed, &replacement, &PyTuple_Type, &literals,
                                     &PyFrozenSet_Type, &header_names, &instance, &PyList_Type, &second,
                                     &request_cap, &model_of, &seed))
        return NULL;
    if (PyTuple_GET_SIZE(literals) > MAX_LITERALS) {
        PyErr_SetString(PyExc_ValueError, "Encoder(): too many literals");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(literals); i++) {
        PyObject *literal = PyTuple_GET_ITEM(literals, i);
        if (!PyBytes_CheckExact(literal) || PyBytes_GET_SIZE(literal) == 0) {
            PyErr_SetString(PyExc_TypeError, "Encoder(): literals must be non-empty bytes");
            return NULL;
        }
    }
    if (!PyCallable_Check(model_of)) {
        PyErr_SetString(PyExc_TypeError, "Encoder(): model_of must be callable");
        return NULL;
    }
    Encoder *e = (Encoder *)type->tp_alloc(type, 0);
    if (e == NULL) return NULL;
    e->fields = Py_NewRef(fields);
    e->listed = Py_NewRef(listed);
    e->replacement = Py_NewRef(replacement);
    e->literals = Py_NewRef(literals);
    e->header_names = Py_NewRef(header_names);
    e->instance = Py_NewRef(instance);
    e->second = Py_NewRef(second);
    e->model_of = Py_NewRef(model_of);
    e->request_cap = request_cap;
    e->table.seed = seed;
    scanner_init(&e->scanner, literals);
    return (PyObject *)e;
}

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "haproxy_ai.mirror._fastrecord.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Encoder_doc,
    .tp_new = Encoder_new,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_traverse = (traverseproc)Encoder_traverse,
    .tp_clear = (inquiry)Encoder_clear,
    .tp_methods = Encoder_methods,
};

/* -- record.Exchange ---------------------------------------------------------------------- */

static PyObject *S_complete, *S_empty, *B_empty, *T_empty, *NO_ATTEMPTS;

static PyObject *exchange_make(PyTypeObject *type, PyObject *const *args) {
    double received = PyFloat_AsDouble(args[1]);
    if (received == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t body_cap = PyLong_AsSsize_t(args[7]);
    if (body_cap == -1 && PyErr_Occurred()) return NULL;
    Exchange *x = (Exchange *)type->tp_alloc(type, 0);
    if (x == NULL) return NULL;
    if ((x->chunks = PyList_New(0)) == NULL || (x->tail = PyList_New(0)) == NULL) {
        Py_DECREF(x);
        return NULL;
    }
    x->id = Py_NewRef(args[0]);
    x->received = x->done = received;
    x->method = Py_NewRef(args[2]);
    x->raw_path = Py_NewRef(args[3]);
    x->query = Py_NewRef(args[4]);
    x->request_headers = Py_NewRef(args[5]);
    x->client = Py_NewRef(args[6]);
    x->body_cap = body_cap;
    x->request_id = Py_NewRef(S_empty);
    x->request_body = Py_NewRef(B_empty);
    x->response_headers = Py_NewRef(T_empty);
    x->first_byte = Py_NewRef(Py_None);
    x->ended = Py_NewRef(S_complete);
    x->error = Py_NewRef(Py_None);
    x->backend = Py_NewRef(Py_None);
    x->attempts = Py_NewRef(NO_ATTEMPTS);
    return (PyObject *)x;
}

static PyObject *Exchange_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"record_id", "received", "method", "raw_path", "query", "request_headers", "client",
                               "body_cap", NULL};
    PyObject *a[8];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO:Exchange", keywords, &a[0], &a[1], &a[2], &a[3], &a[4],
                                     &a[5], &a[6], &a[7]))
        return NULL;
    return exchange_make(type, a);
}

/* The request path's call, eight positional arguments, without an argument tuple; any other
 * call goes through Exchange_new. */
static PyObject *Exchange_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs == 8 && nkw == 0) return exchange_make((PyTypeObject *)type, args);
    PyObject *tuple = PyTuple_New(nargs), *dict = nkw ? PyDict_New() : NULL, *result = NULL;
    if (tuple == NULL || (nkw && dict == NULL)) goto out;
    for (Py_ssize_t i = 0; i < nargs; i++) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (PyDict_SetItem(dict, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) goto out;
    }
    result = Exchange_new((PyTypeObject *)type, tuple, dict);
out:
    Py_XDECREF(tuple);
    Py_XDECREF(dict);
    return result;
}

PyDoc_STRVAR(add_doc, "add(chunk)\n--\n\nCount a response body chunk sent to the client, keeping it while under "
                      "the cap (later chunks: only the last four).");

static PyObject *Exchange_add(Exchange *x, PyObject *chunk) {
    Py_ssize_t n = PyBytes_Check(chunk) ? PyBytes_GET_SIZE(chunk) : PyObject_Size(chunk);
    if (n < 0) return NULL;
    PyObject *to = x->kept < x->body_cap ? x->chunks : x->tail;
    if (to == NULL || !PyList_Check(to)) {
        PyErr_SetString(PyExc_TypeError, "Exchange.add(): chunks and tail must be lists");
        return NULL;
    }
    if (PyList_Append(to, chunk) < 0) return NULL;
    x->response_bytes += n;
    if (to == x->chunks) x->kept += n;
    else if (PyList_GET_SIZE(to) > 4 && PyList_SetSlice(to, 0, 1, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(respond_doc, "respond(status, headers, first_byte)\n--\n\nThe response's status, the replica's "
                          "headers and when its first byte came (monotonic seconds).");

static PyObject *Exchange_respond(Exchange *x, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "respond() takes 3 arguments: status, headers, first_byte");
        return NULL;
    }
    Py_ssize_t status = PyLong_AsSsize_t(args[0]);
    if (status == -1 && PyErr_Occurred()) return NULL;
    x->status = status;
    Py_SETREF(x->response_headers, Py_NewRef(args[1]));
    Py_SETREF(x->first_byte, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyMethodDef Exchange_methods[] = {
    {"add", (PyCFunction)Exchange_add, METH_O, add_doc},
    {"respond", (PyCFunction)(void (*)(void))Exchange_respond, METH_FASTCALL, respond_doc},
    {NULL, NULL, 0, NULL},
};

#define OBJ(name) {#name, T_OBJECT_EX, offsetof(Exchange, name), 0, NULL}
static PyMemberDef Exchange_members[] = {
    OBJ(id), OBJ(request_id), OBJ(method), OBJ(raw_path), OBJ(query), OBJ(request_headers), OBJ(client),
    OBJ(request_body), OBJ(response_headers), OBJ(first_byte), OBJ(chunks), OBJ(tail), OBJ(ended), OBJ(error),
    OBJ(backend), OBJ(attempts),
    {"received", T_DOUBLE, offsetof(Exchange, received), 0, NULL},
    {"received_wall", T_DOUBLE, offsetof(Exchange, received_wall), 0, NULL},
    {"done", T_DOUBLE, offsetof(Exchange, done), 0, NULL},
    {"body_cap", T_PYSSIZET, offsetof(Exchange, body_cap), 0, NULL},
    {"kept", T_PYSSIZET, offsetof(Exchange, kept), 0, NULL},
    {"response_bytes", T_PYSSIZET, offsetof(Exchange, response_bytes), 0, NULL},
    {"status", T_PYSSIZET, offsetof(Exchange, status), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
#undef OBJ

/* Every object an Exchange holds, for traverse and clear. */
#define EXCHANGE_OBJECTS(apply)                                                                                    \
    apply(x->id);                                                                                                  \
    apply(x->request_id);                                                                                          \
    apply(x->method);                                                                                              \
    apply(x->raw_path);                                                                                            \
    apply(x->query);                                                                                               \
    apply(x->request_headers);                                                                                     \
    apply(x->client);                                                                                              \
    apply(x->request_body);                                                                                        \
    apply(x->response_headers);                                                                                    \
    apply(x->first_byte);                                                                                          \
    apply(x->chunks);                                                                                              \
    apply(x->tail);                                                                                                \
    apply(x->ended);                                                                                               \
    apply(x->error);                                                                                               \
    apply(x->backend);                                                                                             \
    apply(x->attempts)

static int Exchange_traverse(Exchange *x, visitproc visit, void *arg) {
    EXCHANGE_OBJECTS(Py_VISIT);
    return 0;
}

static int Exchange_clear(Exchange *x) {
    EXCHANGE_OBJECTS(Py_CLEAR);
    return 0;
}

static void Exchange_dealloc(Exchange *x) {
    PyObject_GC_UnTrack(x);
    Exchange_clear(x);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

PyDoc_STRVAR(Exchange_doc,
             "Exchange(record_id, received, method, raw_path, query, request_headers, client, body_cap)\n--\n\n"
             "A request/response pair as the proxy saw it: record.py's Exchange, in C.");

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "haproxy_ai.mirror._fastrecord.Exchange",
    .tp_basicsize = sizeof(Exchange),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Exchange_doc,
    .tp_new = Exchange_new,
    .tp_vectorcall = Exchange_vectorcall,
    .tp_dealloc = (destructor)Exchange_dealloc,
    .tp_traverse = (traverseproc)Exchange_traverse,
    .tp_clear = (inquiry)Exchange_clear,
    .tp_methods = Exchange_methods,
    .tp_members = Exchange_members,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastrecord", "The mirror record encoder's common case (see record.py).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastrecord(void) {
    static const char *attrs[A_COUNT] = {
        "id", "request_id", "received", "first_byte", "done", "client", "method", "raw_path", "query",
        "request_body", "status", "ended", "backend", "error", "attempts", "request_headers", "response_headers",
        "chunks", "response_bytes", "kept",
    };
    for (int c = 0; c < 256; c++) {
        ESCAPE[c] = c < 0x20 || c == '"' || c == '\\';
        LOWER[c] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        UPPER[c] = (unsigned char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    for (int i = 0; i < A_COUNT; i++) {
        if ((names_[i] = PyUnicode_InternFromString(attrs[i])) == NULL) return NULL;
    }
    if (!(S_backend = PyUnicode_InternFromString("backend")) || !(S_name = PyUnicode_InternFromString("name")) ||
        !(S_outcome = PyUnicode_InternFromString("outcome")) || !(S_value = PyUnicode_InternFromString("_value_")) ||
        !(S_status = PyUnicode_InternFromString("status")) || !(S_started = PyUnicode_InternFromString("started")) ||
        !(S_headers_at = PyUnicode_InternFromString("headers_at")) || !(S_ended = PyUnicode_InternFromString("ended")) ||
        !(S_received_wall = PyUnicode_InternFromString("received_wall")))
        return NULL;
    if (!(S_complete = PyUnicode_InternFromString("complete")) || !(S_empty = PyUnicode_InternFromString("")) ||
        !(B_empty = PyBytes_FromStringAndSize("", 0)) || !(T_empty = PyTuple_New(0)) || !(NO_ATTEMPTS = PyList_New(0)))
        return NULL;
    if (PyType_Ready(&EncoderType) < 0 || PyType_Ready(&ExchangeType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddObjectRef(module, "Exchange", (PyObject *)&ExchangeType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
