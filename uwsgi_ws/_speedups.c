/*
 * Optional native helper for the broadcast fan-out: write one buffer to many
 * non-blocking sockets in a C loop, with the GIL released once for the whole
 * loop instead of once per socket. The pure-Python path in hub.py does the
 * same thing and is used when this module is not built (UWSGI_WS_PURE=1
 * forces it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

PyDoc_STRVAR(send_many_doc,
"send_many(fds, data) -> list of (index, result)\n\n"
"send() `data` to every fd of the list `fds` (MSG_NOSIGNAL | MSG_DONTWAIT).\n"
"Returns only the exceptions: (index, bytes sent) for a partial write,\n"
"(index, -errno) for an error (-EAGAIN: nothing was written).");

static PyObject *send_many(PyObject *self, PyObject *args) {
    PyObject *fds;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "O!y*:send_many", &PyList_Type, &fds, &buf))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(fds);
    int *fd = NULL;
    ssize_t *res = NULL;
    PyObject *out = NULL;
    if (n == 0) {
        PyBuffer_Release(&buf);
        return PyList_New(0);
    }
    fd = PyMem_Malloc(sizeof(int) * n);
    res = PyMem_Malloc(sizeof(ssize_t) * n);
    if (!fd || !res) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyList_GET_ITEM(fds, i));
        if (v == -1 && PyErr_Occurred())
            goto done;
        fd[i] = (int)v;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        ssize_t r;
        do {
            r = send(fd[i], buf.buf, (size_t)buf.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        res[i] = r < 0 ? -(ssize_t)errno : r;
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(0);
    if (!out)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (res[i] != buf.len) {
            PyObject *item = Py_BuildValue("(nn)", i, res[i]);
            if (!item || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(item);
        }
    }
done:
    PyMem_Free(fd);
    PyMem_Free(res);
    PyBuffer_Release(&buf);
    return out;
}

/*
 * Signal relay for a worker's full shutdown (uwsgi_ws/runtime/threads.py): uWSGI's
 * own handler for SIGINT/SIGTERM in a threaded worker (end_me) exits at once, in C,
 * so no Python code of ours would run before the process is gone. relay_signals()
 * puts a handler in front of it that only writes the signal number to a pipe (an
 * async-signal-safe write); a thread of ours reads it, queues the 1001 close frames,
 * then restore_signals() puts uWSGI's handlers back and re-raises the signal.
 */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define RELAY_MAX 4
static int relay_fd = -1;
static int relay_signums[RELAY_MAX];
static struct sigaction relay_old[RELAY_MAX];
static int relay_count = 0;

static volatile sig_atomic_t relayed = 0;

static void relay_handler(int signum) {
    unsigned char b = (unsigned char)signum;
    int saved = errno;
    if (relayed++ || relay_fd < 0) {
        /* a second signal: the relay did not finish; give uWSGI its handler back now */
        for (int i = 0; i < relay_count; i++)
            sigaction(relay_signums[i], &relay_old[i], NULL);
        raise(signum);
    } else {
        (void)!write(relay_fd, &b, 1);
    }
    errno = saved;
}

PyDoc_STRVAR(relay_signals_doc,
"relay_signals(fd, signums) -> None\n\n"
"Install a handler for each signal of `signums` that writes its number (one byte)\n"
"to `fd`; the previous handlers are kept for restore_signals(). Once per process.");

static PyObject *relay_signals(PyObject *self, PyObject *args) {
    int fd;
    PyObject *signums;
    if (!PyArg_ParseTuple(args, "iO!:relay_signals", &fd, &PyList_Type, &signums))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(signums);
    if (relay_count || n > RELAY_MAX) {
        PyErr_SetString(PyExc_RuntimeError, "relay_signals: already installed, or too many signals");
        return NULL;
    }
    relay_fd = fd;
    for (Py_ssize_t i = 0; i < n; i++) {
        int signum = (int)PyLong_AsLong(PyList_GET_ITEM(signums, i));
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = relay_handler;
        sigemptyset(&sa.sa_mask);
        if (sigaction(signum, &sa, &relay_old[relay_count]) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        relay_signums[relay_count++] = signum;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(restore_signals_doc,
"restore_signals() -> None\n\nPut back the handlers relay_signals() replaced.");

static PyObject *restore_signals(PyObject *self, PyObject *noargs) {
    for (int i = 0; i < relay_count; i++)
        sigaction(relay_signums[i], &relay_old[i], NULL);
    relay_count = 0;
    relay_fd = -1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"send_many", send_many, METH_VARARGS, send_many_doc},
    {"relay_signals", relay_signals, METH_VARARGS, relay_signals_doc},
    {"restore_signals", restore_signals, METH_NOARGS, restore_signals_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "uwsgi_ws._speedups",
    "Optional native helpers for uwsgi_ws (see hub.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
