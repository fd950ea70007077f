/* The mirror record encoder's common case, in C (optional: record.py works without it).
 *
 * encode() writes the same bytes as record.encode()'s Python path for an exchange that needs
 * no redaction work beyond cache lookups: every header field already in the Redactor's caches
 * (so its value was redacted by Python when first seen), an ASCII path, UTF-8 bodies, all free
 * of every pattern's required literal (so no pattern can match them; see scan()), no query
 * string, no error, not a stream, nothing truncated, all three timestamps within the cached
 * second. It redacts nothing
 * itself. For anything else it returns None and the caller takes the Python path, which also
 * fills the caches. tests/test_mirror_native.py holds the two paths to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <strings.h>

#define FALLBACK 1 /* "not the common case": return None, no exception */
#define MAX_FIELDS 64
#define MAX_LITERALS 64 /* more: Redactor.native_caches is None */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int grow(Buf *b, Py_ssize_t need) {
    if (b->len + need <= b->cap) return 0;
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

static int put(Buf *b, const char *s, Py_ssize_t n) {
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

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* Whether any of the eight bytes at p is < 0x20, '"' or backslash. Exact when none is (a flagged
 * block is then looked at byte by byte, so a false positive only costs time). */
static inline int needs_escape(const char *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t quote = x ^ (ONES * '"'), backslash = x ^ (ONES * '\\');
    return ((((x - ONES * 0x20) & ~x) | ((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash)) & HIGHS) != 0;
}

/* A JSON string of UTF-8 bytes, escaped as msgspec escapes it. */
static int put_string_utf8(Buf *b, const char *s, Py_ssize_t n) {
    if (grow(b, n * 6 + 2)) return -1;
    char *o = b->data + b->len;
    *o++ = '"';
    Py_ssize_t run = 0; /* start of the bytes not yet copied */
    Py_ssize_t i = 0;
    while (i < n) {
        /* Eight bytes at a time while none of them needs escaping (most of any text); a block
         * that does is gone through byte by byte. */
        if (i + 8 <= n && !needs_escape(s + i)) {
            i += 8;
            continue;
        }
        for (Py_ssize_t end = i + 8 < n ? i + 8 : n; i < end; i++) {
            unsigned char c = (unsigned char)s[i];
            if (!ESCAPE[c]) continue;
            memcpy(o, s + run, i - run);
            o += i - run;
            run = i + 1;
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
        }
    }
    memcpy(o, s + run, n - run);
    o += n - run;
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

/* An attribute that must exist; NULL with the exception set otherwise. */
static PyObject *attr(PyObject *o, PyObject *name) { return PyObject_GetAttr(o, name); }

static unsigned char LOWER[256], UPPER[256];

/* The literals, indexed once per record for scan(): what each byte means (0 nothing, 1 some
 * literal starts with it in either case, 2 look closer: NUL, non-ASCII, backslash), and the
 * literals chained by first character (head, next). */
typedef struct {
    PyObject *literals; /* tuple of lowercase ASCII bytes */
    unsigned char kind[256];
    signed char head[256], next[MAX_LITERALS];
} Scanner;

static void scanner_init(Scanner *sc, PyObject *literals) {
    sc->literals = literals;
    memset(sc->kind, 0, 0x80);
    memset(sc->kind + 0x80, 2, 0x80);
    sc->kind[0] = 2;
    sc->kind['\\'] = 2;
    memset(sc->head, -1, sizeof sc->head);
    for (Py_ssize_t k = PyTuple_GET_SIZE(literals) - 1; k >= 0; k--) {
        unsigned char c = (unsigned char)PyBytes_AS_STRING(PyTuple_GET_ITEM(literals, k))[0];
        sc->next[k] = sc->head[c];
        sc->head[c] = (signed char)k;
        if (c < 0x80 && sc->kind[c] != 2) sc->kind[c] = sc->kind[UPPER[c]] = 1;
    }
}

/* FALLBACK when ``s[0:n]`` contains a literal in any case (the literals are lowercase: what
 * Redactor._may_match looks for in str.lower()), a NUL, or non-ASCII bytes unless ``utf8``
 * (bodies: then it must be valid UTF-8, as Python decodes it, and hold none of the four
 * characters a case-insensitive pattern matches as an ASCII letter: U+0130, U+0131, U+017F,
 * U+212A; any other non-ASCII character cannot be part of an ASCII literal either way). With
 * ``escapes``, also FALLBACK on a backslash-u (a body the Python path parses). One pass: a
 * literal is compared only where the text has its first character. */
static int scan(const Scanner *sc, const char *s, Py_ssize_t n, int escapes, int utf8) {
    int non_ascii = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!sc->kind[c]) continue;
        if (sc->kind[c] == 2) {
            if (c == '\\') {
                if (escapes && i + 1 < n && s[i + 1] == 'u') return FALLBACK;
                continue;
            }
            if (c == 0 || !utf8) return FALLBACK;
            /* U+0130, U+0131, U+017F: letters a case-insensitive pattern matches as i, i, s */
            if ((c == 0xC4 || c == 0xC5) && i + 1 < n) {
                unsigned char d = (unsigned char)s[i + 1];
                if ((c == 0xC4 && (d == 0xB0 || d == 0xB1)) || (c == 0xC5 && d == 0xBF)) return FALLBACK;
            }
            if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x84 && (unsigned char)s[i + 2] == 0xAA)
                return FALLBACK; /* U+212A */
            non_ascii = 1;
            continue;
        }
        for (int k = sc->head[LOWER[c]]; k >= 0; k = sc->next[k]) {
            PyObject *literal = PyTuple_GET_ITEM(sc->literals, k);
            const unsigned char *l = (const unsigned char *)PyBytes_AS_STRING(literal);
            Py_ssize_t m = PyBytes_GET_SIZE(literal), j = 1;
            if (m > n - i) continue;
            while (j < m && LOWER[(unsigned char)s[i + j]] == l[j]) j++;
            if (j == m) return FALLBACK;
        }
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

typedef struct {
    PyObject *fields;      /* dict: (raw name, raw value) -> (name, redacted value) */
    PyObject *listed;      /* dict: raw name of a listed header -> name */
    PyObject *replacement; /* str */
    Scanner scanner;       /* the patterns' required literals */
} Caches;

/* A headers object from the caches. ``stream`` is set when content-type is an event stream. */
static int put_headers(Buf *b, PyObject *pairs, const Caches *c, int *stream) {
    PyObject *seq = PySequence_Fast(pairs, "headers");
    if (seq == NULL) {
        PyErr_Clear();
        return FALLBACK;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *names[MAX_FIELDS];
    int rc = FALLBACK;
    if (count > MAX_FIELDS) goto out;
    if ((rc = PUT(b, "{"))) goto out;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *name, *value;
        rc = FALLBACK;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) goto out;
        /* Exact bytes or str only: hashing and comparing them runs no Python code, so the borrowed
         * references below stay valid. */
        for (int k = 0; k < 2; k++) {
            PyObject *item = PyTuple_GET_ITEM(pair, k);
            if (!PyBytes_CheckExact(item) && !PyUnicode_CheckExact(item)) goto out;
        }
        PyObject *field = PyDict_GetItemWithError(c->fields, pair);
        if (field != NULL) {
            if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 2) goto out;
            name = PyTuple_GET_ITEM(field, 0);
            value = PyTuple_GET_ITEM(field, 1);
        } else {
            if (PyErr_Occurred()) { /* an unhashable field */
                PyErr_Clear();
                goto out;
            }
            name = PyDict_GetItemWithError(c->listed, PyTuple_GET_ITEM(pair, 0));
            if (name == NULL) {
                PyErr_Clear();
                goto out; /* not seen yet: the Python path decodes, redacts and caches it */
            }
            value = c->replacement;
        }
        for (Py_ssize_t j = 0; j < i; j++) { /* a repeated name: Python joins the values */
            int equal = PyObject_RichCompareBool(names[j], name, Py_EQ);
            if (equal != 0) {
                if (equal < 0) PyErr_Clear();
                goto out;
            }
        }
        names[i] = name;
        if (stream != NULL && PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "content-type") == 0) {
            Py_ssize_t n;
            const char *v = PyUnicode_Check(value) ? PyUnicode_AsUTF8AndSize(value, &n) : NULL;
            if (v == NULL) {
                PyErr_Clear();
                goto out;
            }
            if (n >= 17 && strncasecmp(v, "text/event-stream", 17) == 0) *stream = 1;
        }
        if (i && (rc = PUT(b, ","))) goto out;
        if ((rc = put_str(b, name)) || (rc = PUT(b, ":")) || (rc = put_str(b, value))) goto out;
    }
    rc = PUT(b, "}");
out:
    Py_DECREF(seq);
    return rc;
}

/* ``"body":...,"body_encoding":"utf-8","bytes":N,"body_truncated":false`` for a whole body. */
static int put_body(Buf *b, const char *s, Py_ssize_t n, long long total, const Caches *c) {
    int rc;
    if (n == 0) rc = PUT(b, "\"body\":null");
    else if ((rc = scan(&c->scanner, s, n, 1, 1)) == 0 && (rc = PUT(b, "\"body\":")) == 0) rc = put_string_utf8(b, s, n);
    if (rc) return rc;
    if ((rc = PUT(b, ",\"body_encoding\":\"utf-8\",\"bytes\":")) || (rc = put_int(b, total))) return rc;
    return PUT(b, ",\"body_truncated\":false");
}

/* Microseconds of ``at - start`` rounded as record.py rounds durations (int(x * 1e6 + 0.5)). */
static long long micros_between(double at, double start) { return (long long)((at - start) * 1000000.0 + 0.5); }

static int put_stamp(Buf *b, PyObject *prefix, long long micros) {
    char tmp[8] = {(char)('0' + micros / 100000), (char)('0' + micros / 10000 % 10), (char)('0' + micros / 1000 % 10),
                   (char)('0' + micros / 100 % 10),    (char)('0' + micros / 10 % 10),    (char)('0' + micros % 10),
                   'Z',                                '"'};
    int rc;
    if ((rc = PUT(b, "\"")) || (rc = put(b, PyUnicode_AsUTF8(prefix), PyUnicode_GET_LENGTH(prefix)))) return rc;
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

static PyObject *S_backend, *S_name, *S_outcome, *S_value, *S_status, *S_started, *S_headers_at, *S_ended;

enum {
    A_ID, A_REQUEST_ID, A_RECEIVED_WALL, A_RECEIVED, A_FIRST_BYTE, A_DONE, A_CLIENT, A_METHOD, A_RAW_PATH, A_QUERY,
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
        if (!(backend = attr(a, S_backend)) || !(name = attr(backend, S_name)) || !(outcome = attr(a, S_outcome)) ||
            !(status = attr(a, S_status)) || !(started = attr(a, S_started)) || !(headers_at = attr(a, S_headers_at)) ||
            !(ended = attr(a, S_ended)))
            goto next;
        if (outcome != Py_None && !(value = attr(outcome, S_value))) goto next;
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

static int put_record(Buf *b, PyObject **a, PyObject *second, PyObject *instance, Py_ssize_t request_cap,
                      PyObject *model, const Caches *c) {
    int rc;
    /* What only the Python path handles. */
    if (!PyBytes_Check(a[A_QUERY]) || PyBytes_GET_SIZE(a[A_QUERY]) != 0) return FALLBACK;
    if (a[A_ERROR] != Py_None || a[A_FIRST_BYTE] == Py_None) return FALLBACK;
    if (!PyBytes_Check(a[A_RAW_PATH]) || !PyBytes_Check(a[A_REQUEST_BODY]) || !PyList_Check(a[A_CHUNKS])) return FALLBACK;
    if (!PyLong_CheckExact(a[A_STATUS]) || !PyLong_CheckExact(a[A_RESPONSE_BYTES]) || !PyLong_CheckExact(a[A_KEPT]))
        return FALLBACK;
    long long response_bytes = PyLong_AsLongLong(a[A_RESPONSE_BYTES]), kept = PyLong_AsLongLong(a[A_KEPT]),
              status = PyLong_AsLongLong(a[A_STATUS]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;
    }
    if (response_bytes > kept || PyBytes_GET_SIZE(a[A_REQUEST_BODY]) > request_cap) return FALLBACK;
    if (!PyList_CheckExact(second) || PyList_GET_SIZE(second) != 2) return FALLBACK;
    PyObject *prefix = PyList_GET_ITEM(second, 1);
    if (!PyUnicode_IS_COMPACT_ASCII(prefix)) return FALLBACK;
    double sec0 = PyFloat_AsDouble(PyList_GET_ITEM(second, 0)), wall = PyFloat_AsDouble(a[A_RECEIVED_WALL]),
           received = PyFloat_AsDouble(a[A_RECEIVED]), done = PyFloat_AsDouble(a[A_DONE]),
           first_byte = PyFloat_AsDouble(a[A_FIRST_BYTE]);
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
    Buf request_headers = {NULL, 0, 0}, response_headers = {NULL, 0, 0};
    int stream = 0;
    if ((rc = put_headers(&response_headers, a[A_RESPONSE_HEADERS], c, &stream)) == 0 && !stream)
        rc = put_headers(&request_headers, a[A_REQUEST_HEADERS], c, NULL);
    if (stream && !rc) rc = FALLBACK;
    if (rc) goto out;

    const char *path = PyBytes_AS_STRING(a[A_RAW_PATH]);
    Py_ssize_t path_len = PyBytes_GET_SIZE(a[A_RAW_PATH]);
    if ((rc = scan(&c->scanner, path, path_len, 0, 0))) goto out; /* latin-1 in Python: ASCII only here */

    if ((rc = PUT(b, "{\"schema\":1,\"id\":")) || (rc = put_str(b, a[A_ID])) || (rc = PUT(b, ",\"request_id\":")) ||
        (rc = put_str(b, a[A_REQUEST_ID])) || (rc = PUT(b, ",\"instance\":")) || (rc = put_str(b, instance)) ||
        (rc = PUT(b, ",\"received_at\":")) || (rc = put_stamp(b, prefix, at)) ||
        (rc = PUT(b, ",\"first_byte_at\":")) || (rc = put_stamp(b, prefix, at + ttfb)) ||
        (rc = PUT(b, ",\"done_at\":")) || (rc = put_stamp(b, prefix, at + latency)) ||
        (rc = PUT(b, ",\"latency_ms\":")) || (rc = put_ms(b, latency)) || (rc = PUT(b, ",\"ttfb_ms\":")) ||
        (rc = put_ms(b, ttfb)) || (rc = PUT(b, ",\"client\":")) || (rc = put_str_or_null(b, a[A_CLIENT])) ||
        (rc = PUT(b, ",\"method\":")) || (rc = put_str(b, a[A_METHOD])) || (rc = PUT(b, ",\"path\":")) ||
        (rc = put_string_utf8(b, path, path_len)) || (rc = PUT(b, ",\"query\":\"\",\"model\":")) ||
        (rc = put_str_or_null(b, model)) || (rc = PUT(b, ",\"status\":")) ||
        (rc = put_int(b, status)) || (rc = PUT(b, ",\"ended\":")) ||
        (rc = put_str(b, a[A_ENDED])) || (rc = PUT(b, ",\"backend\":")) || (rc = put_str_or_null(b, a[A_BACKEND])) ||
        (rc = PUT(b, ",\"error\":null,\"attempts\":")) || (rc = put_attempts(b, a[A_ATTEMPTS], received)) ||
        (rc = PUT(b, ",\"request\":{\"headers\":")) || (rc = put(b, request_headers.data, request_headers.len)) ||
        (rc = PUT(b, ",")))
        goto out;
    if ((rc = put_body(b, PyBytes_AS_STRING(a[A_REQUEST_BODY]), PyBytes_GET_SIZE(a[A_REQUEST_BODY]),
                       PyBytes_GET_SIZE(a[A_REQUEST_BODY]), c)))
        goto out;
    if ((rc = PUT(b, "},\"response\":{\"headers\":")) || (rc = put(b, response_headers.data, response_headers.len)) ||
        (rc = PUT(b, ",")))
        goto out;

    PyObject *chunks = a[A_CHUNKS];
    Py_ssize_t nchunks = PyList_GET_SIZE(chunks);
    if (nchunks == 1 && PyBytes_Check(PyList_GET_ITEM(chunks, 0))) {
        PyObject *chunk = PyList_GET_ITEM(chunks, 0);
        rc = put_body(b, PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), response_bytes, c);
    } else {
        Buf joined = {NULL, 0, 0};
        rc = 0;
        for (Py_ssize_t i = 0; i < nchunks && !rc; i++) {
            PyObject *chunk = PyList_GET_ITEM(chunks, i);
            rc = PyBytes_Check(chunk) ? put(&joined, PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk)) : FALLBACK;
        }
        if (!rc) rc = put_body(b, joined.data, joined.len, response_bytes, c);
        PyMem_Free(joined.data);
    }
    if (rc || (rc = PUT(b, ",\"stream\":false,\"text\":null,\"usage\":null}}"))) goto out;
out:
    PyMem_Free(request_headers.data);
    PyMem_Free(response_headers.data);
    return rc;
}

static PyObject *names_[A_COUNT];

PyDoc_STRVAR(encode_doc,
             "encode(exchange, second, instance, request_cap, model, fields, listed, replacement, literals)\n"
             "--\n\n"
             "The record line for the common case, or None: see the module's source comment.");

static PyObject *encode(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "encode() takes 9 arguments");
        return NULL;
    }
    PyObject *exchange = args[0], *second = args[1], *instance = args[2], *model = args[4];
    Py_ssize_t request_cap = PyLong_AsSsize_t(args[3]);
    if (request_cap == -1 && PyErr_Occurred()) return NULL;
    PyObject *literals = args[8];
    if (!PyDict_CheckExact(args[5]) || !PyDict_CheckExact(args[6]) || !PyTuple_CheckExact(literals)) {
        PyErr_SetString(PyExc_TypeError, "encode(): fields and listed must be dicts, literals a tuple");
        return NULL;
    }
    if (PyTuple_GET_SIZE(literals) > MAX_LITERALS) {
        PyErr_SetString(PyExc_ValueError, "encode(): too many literals");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(literals); i++) {
        PyObject *literal = PyTuple_GET_ITEM(literals, i);
        if (!PyBytes_CheckExact(literal) || PyBytes_GET_SIZE(literal) == 0) {
            PyErr_SetString(PyExc_TypeError, "encode(): literals must be non-empty bytes");
            return NULL;
        }
    }
    Caches c = {args[5], args[6], args[7], {0}};
    scanner_init(&c.scanner, literals); /* once per record, for the path and both bodies */
    PyObject *a[A_COUNT] = {NULL};
    int rc = 0;
    for (int i = 0; i < A_COUNT; i++) {
        if ((a[i] = PyObject_GetAttr(exchange, names_[i])) == NULL) {
            rc = -1;
            break;
        }
    }
    Buf b = {NULL, 0, 0};
    if (!rc && !(rc = grow(&b, 2048))) rc = put_record(&b, a, second, instance, request_cap, model, &c);
    for (int i = 0; i < A_COUNT; i++) Py_XDECREF(a[i]);
    if (rc < 0 && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        /* An exchange this code did not expect (a missing attribute, an odd type): the Python
         * path encodes it, or reports it. */
        PyErr_Clear();
        rc = FALLBACK;
    }
    PyObject *result = NULL;
    if (rc == 0) result = PyBytes_FromStringAndSize(b.data, b.len);
    else if (rc == FALLBACK) result = Py_NewRef(Py_None);
    PyMem_Free(b.data);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastrecord", "The mirror record encoder's common case (see record.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastrecord(void) {
    static const char *attrs[A_COUNT] = {
        "id", "request_id", "received_wall", "received", "first_byte", "done", "client", "method", "raw_path", "query",
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
        !(S_headers_at = PyUnicode_InternFromString("headers_at")) || !(S_ended = PyUnicode_InternFromString("ended")))
        return NULL;
    return PyModule_Create(&module_def);
}
