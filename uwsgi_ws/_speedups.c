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

static PyMethodDef methods[] = {
    {"send_many", send_many, METH_VARARGS, send_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "uwsgi_ws._speedups",
    "Optional native helpers for uwsgi_ws (see hub.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
