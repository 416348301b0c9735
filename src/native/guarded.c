/* The synchronized wrappers' base: a ctypes object and the lock that guards it.
 *
 * `with v.get_lock(): v.value += 1` takes the lock three times: once in the
 * `with`, and again (re-entering the RLock) in the read and in the write of
 * `value`. Written in Python, each access was a property frame with a
 * try/finally around two more calls, about 75 ns, and it ran inside the
 * critical section, where two processes incrementing one Value serialise:
 *
 *     Python property (was)                GuardedField (here), one C call
 *     self.acquire()  -> C, re-entry       acquire: SemLock fast path in C
 *     try: self._obj.value                 getattr(obj, name)
 *     finally: self.release() -> C         release: SemLock fast path in C
 *
 * So a wrapper's fields are GuardedField descriptors, and its item access,
 * get_lock(), get_obj(), __enter__ and __exit__ are C methods of Guarded.
 * A serentak Lock/RLock/Semaphore is driven directly (sync.c: the same
 * acquire as lock.acquire(), with its spinning, futex sleeps, dead-owner
 * takeover and Ctrl-C checks); any other lock object (the stdlib's, a
 * user's) through its own acquire() and release() methods, as the stdlib's
 * wrapper does.
 */
#include "native.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *obj;  /* the ctypes object; NULL until set */
    PyObject *lock; /* what guards it; NULL until set */
} GuardedObject;

static PyTypeObject GuardedType;

static PyObject *str_acquire = NULL; /* interned method names */
static PyObject *str_release = NULL;
static PyObject *str_enter = NULL;
static PyObject *str_exit = NULL;

/* ---- taking and giving back the lock ------------------------------------ */

/* `semlock`: serentak_is_semlock(lock), looked up once per guarded access. */
static int
guard_take(PyObject *lock, int semlock)
{
    if (semlock) {
        return serentak_semlock_acquire(lock);
    }
    PyObject *result = PyObject_CallMethodNoArgs(lock, str_acquire);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static int
guard_give(PyObject *lock, int semlock)
{
    if (semlock) {
        return serentak_semlock_release(lock);
    }
    PyObject *result = PyObject_CallMethodNoArgs(lock, str_release);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Release `lock` after the guarded operation that produced `result` (NULL if
 * it raised), as a `finally:` would: the release happens either way, and an
 * error from the release replaces the operation's, which becomes its context. */
static PyObject *
guard_give_after(PyObject *lock, int semlock, PyObject *result)
{
    if (result != NULL) {
        if (guard_give(lock, semlock) < 0) {
            Py_DECREF(result);
            return NULL;
        }
        return result;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (guard_give(lock, semlock) == 0) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    PyObject *type2, *value2, *traceback2;
    PyErr_Fetch(&type2, &value2, &traceback2);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    PyErr_NormalizeException(&type2, &value2, &traceback2);
    if (value2 != NULL && value != NULL) {
        PyException_SetContext(value2, value); /* steals value */
        value = NULL;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    PyErr_Restore(type2, value2, traceback2);
    return NULL;
}

/* The wrapper's object and lock, new references, and whether the lock is a
 * serentak SemLock; -1 if `self` is not a Guarded whose fields are set. */
static int
guard_parts(PyObject *self, PyObject **obj, PyObject **lock, int *semlock)
{
    if (!PyObject_TypeCheck(self, &GuardedType)) {
        PyErr_Format(PyExc_TypeError, "expected a synchronized wrapper, not %.100s",
                     Py_TYPE(self)->tp_name);
        return -1;
    }
    GuardedObject *guarded = (GuardedObject *)self;
    if (guarded->obj == NULL || guarded->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError,
                        "synchronized wrapper used before its object and lock were set");
        return -1;
    }
    /* Held across the operation: a thread may rebind the fields meanwhile. */
    *obj = Py_NewRef(guarded->obj);
    *lock = Py_NewRef(guarded->lock);
    *semlock = serentak_is_semlock(guarded->lock);
    return 0;
}

/* ---- the Guarded type ------------------------------------------------------- */

static int
guarded_traverse(GuardedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->obj);
    Py_VISIT(self->lock);
    return 0;
}

static int
guarded_clear(GuardedObject *self)
{
    Py_CLEAR(self->obj);
    Py_CLEAR(self->lock);
    return 0;
}

static void
guarded_dealloc(GuardedObject *self)
{
    PyObject_GC_UnTrack(self);
    guarded_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
guarded_get_obj(GuardedObject *self, PyObject *unused)
{
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_obj");
        return NULL;
    }
    return Py_NewRef(self->obj);
}

static PyObject *
guarded_get_lock(GuardedObject *self, PyObject *unused)
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_lock");
        return NULL;
    }
    return Py_NewRef(self->lock);
}

static PyObject *
guarded_enter(GuardedObject *self, PyObject *unused)
{
    PyObject *lock = guarded_get_lock(self, NULL);
    if (lock == NULL) {
        return NULL;
    }
    PyObject *result;
    if (serentak_is_semlock(lock)) {
        result = serentak_semlock_acquire(lock) < 0 ? NULL : Py_NewRef(Py_True);
    } else {
        result = PyObject_CallMethodNoArgs(lock, str_enter);
    }
    Py_DECREF(lock);
    return result;
}

static PyObject *
guarded_exit(GuardedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lock = guarded_get_lock(self, NULL);
    if (lock == NULL) {
        return NULL;
    }
    PyObject *result;
    if (serentak_is_semlock(lock)) {
        result = serentak_semlock_release(lock) < 0 ? NULL : Py_NewRef(Py_None);
    } else {
        PyObject *method = PyObject_GetAttr(lock, str_exit);
        result = method == NULL ? NULL : PyObject_Vectorcall(method, args, (size_t)nargs, NULL);
        Py_XDECREF(method);
    }
    Py_DECREF(lock);
    return result;
}

static PyObject *
guarded_getitem(PyObject *self, PyObject *index)
{
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(self, &obj, &lock, &semlock) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (guard_take(lock, semlock) == 0) {
        result = guard_give_after(lock, semlock, PyObject_GetItem(obj, index));
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return result;
}

static PyObject *
guarded_setitem(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "__setitem__ takes exactly 2 arguments");
        return NULL;
    }
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(self, &obj, &lock, &semlock) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (guard_take(lock, semlock) == 0) {
        int rc = PyObject_SetItem(obj, args[0], args[1]);
        result = guard_give_after(lock, semlock, rc < 0 ? NULL : Py_NewRef(Py_None));
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return result;
}

static PyMethodDef guarded_methods[] = {
    {"get_obj", (PyCFunction)guarded_get_obj, METH_NOARGS,
     "The wrapped ctypes object (access it under the lock)."},
    {"get_lock", (PyCFunction)guarded_get_lock, METH_NOARGS, "The lock that guards the object."},
    {"__enter__", (PyCFunction)guarded_enter, METH_NOARGS, "Acquire the lock."},
    {"__exit__", (PyCFunction)(void (*)(void))guarded_exit, METH_FASTCALL, "Release the lock."},
    {"locked_getitem", (PyCFunction)guarded_getitem, METH_O, "obj[index], under the lock."},
    {"locked_setitem", (PyCFunction)(void (*)(void))guarded_setitem, METH_FASTCALL,
     "obj[index] = value, under the lock."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef guarded_members[] = {
    {"_obj", T_OBJECT_EX, offsetof(GuardedObject, obj), 0, "The ctypes object."},
    {"_lock", T_OBJECT_EX, offsetof(GuardedObject, lock), 0, "The lock that guards it."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject GuardedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.Guarded",
    .tp_doc = "Guarded()\n\nA ctypes object (_obj) and the lock (_lock) that guards it: the\n"
              "base of the synchronized wrappers. Set both before use.",
    .tp_basicsize = sizeof(GuardedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)guarded_traverse,
    .tp_clear = (inquiry)guarded_clear,
    .tp_dealloc = (destructor)guarded_dealloc,
    .tp_methods = guarded_methods,
    .tp_members = guarded_members,
};

/* ---- the GuardedField descriptor ------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *name; /* the ctypes object's attribute, e.g. 'value' */
    PyObject *doc;
} FieldObject;

static int
field_init(FieldObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "doc", NULL};
    PyObject *name, *doc = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|O:GuardedField", kwlist, &name, &doc)) {
        return -1;
    }
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    Py_XSETREF(self->name, name);
    Py_XSETREF(self->doc, Py_NewRef(doc));
    return 0;
}

static void
field_dealloc(FieldObject *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->doc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
field_get(FieldObject *self, PyObject *instance, PyObject *owner)
{
    if (instance == NULL) {
        return Py_NewRef((PyObject *)self);
    }
    if (self->name == NULL) {
        PyErr_SetString(PyExc_ValueError, "GuardedField used before __init__");
        return NULL;
    }
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(instance, &obj, &lock, &semlock) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (guard_take(lock, semlock) == 0) {
        result = guard_give_after(lock, semlock, PyObject_GetAttr(obj, self->name));
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return result;
}

static int
field_set(FieldObject *self, PyObject *instance, PyObject *value)
{
    if (self->name == NULL) {
        PyErr_SetString(PyExc_ValueError, "GuardedField used before __init__");
        return -1;
    }
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete the synchronized field '%U'", self->name);
        return -1;
    }
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(instance, &obj, &lock, &semlock) < 0) {
        return -1;
    }
    int rc = -1;
    if (guard_take(lock, semlock) == 0) {
        int set = PyObject_SetAttr(obj, self->name, value);
        PyObject *done = guard_give_after(lock, semlock, set < 0 ? NULL : Py_NewRef(Py_None));
        rc = done == NULL ? -1 : 0;
        Py_XDECREF(done);
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return rc;
}

static PyMemberDef field_members[] = {
    {"name", T_OBJECT_EX, offsetof(FieldObject, name), READONLY, "The guarded attribute."},
    {"__doc__", T_OBJECT, offsetof(FieldObject, doc), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FieldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.GuardedField",
    .tp_doc = "GuardedField(name, doc=None)\n\nOn a Guarded subclass: the attribute `name` of "
              "its ctypes object,\nread and written under its lock.",
    .tp_basicsize = sizeof(FieldObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)field_init,
    .tp_dealloc = (destructor)field_dealloc,
    .tp_descr_get = (descrgetfunc)field_get,
    .tp_descr_set = (descrsetfunc)field_set,
    .tp_members = field_members,
};

int
serentak_guarded_init(PyObject *module)
{
    str_acquire = PyUnicode_InternFromString("acquire");
    str_release = PyUnicode_InternFromString("release");
    str_enter = PyUnicode_InternFromString("__enter__");
    str_exit = PyUnicode_InternFromString("__exit__");
    if (str_acquire == NULL || str_release == NULL || str_enter == NULL || str_exit == NULL) {
        return -1;
    }
    if (PyType_Ready(&GuardedType) < 0 || PyType_Ready(&FieldType) < 0) {
        return -1;
    }
    Py_INCREF(&GuardedType);
    if (PyModule_AddObject(module, "Guarded", (PyObject *)&GuardedType) < 0) {
        Py_DECREF(&GuardedType);
        return -1;
    }
    Py_INCREF(&FieldType);
    if (PyModule_AddObject(module, "GuardedField", (PyObject *)&FieldType) < 0) {
        Py_DECREF(&FieldType);
        return -1;
    }
    return 0;
}
