#include "native.h"

static PyMethodDef *method_tables[] = {serentak_proc_methods, serentak_sync_methods,
                                      serentak_ndalloc_methods, serentak_ints_methods, NULL};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "serentak._os._native",
    .m_doc = "OS primitives Python has no binding for: futex locks, fork, prctl.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) {
        return NULL;
    }
    for (PyMethodDef **table = method_tables; *table != NULL; table++) {
        if (PyModule_AddFunctions(module, *table) < 0) {
            goto error;
        }
    }
    if (PyModule_AddIntConstant(module, "PID_MASK", SERENTAK_PID_MASK) < 0 ||
        PyModule_AddIntConstant(module, "WAITERS", SERENTAK_WAITERS) < 0 ||
        PyModule_AddIntConstant(module, "WAIT_SLICE_NS", SERENTAK_WAIT_SLICE_NS) < 0) {
        goto error;
    }
    if (serentak_proc_init(module) < 0 || serentak_sync_init(module) < 0 ||
        serentak_ring_init(module) < 0 || serentak_guarded_init(module) < 0 ||
        serentak_ndalloc_init(module) < 0) {
        goto error;
    }
    return module;
error:
    Py_DECREF(module);
    return NULL;
}
