/* stallwatch._cstep: the step timing of stallwatch.loop.steps, compiled (optional).
 *
 * Built only when asked for (STALLWATCH_COMPILE=1 at install); stallwatch.loop.steps holds the
 * pure-Python implementation, which is the default and the reference: this file does exactly
 * what it does, field for field, and the core tests run against both.
 *
 * Why it exists: every step of every request goes through Timeline.run_step, and the request's
 * own coroutine is awaited through the span's timed await. In Python, the step's bookkeeping is
 * ~400 ns, and the StopIteration that ends the app's last step unwinds through two Python
 * frames (~900 ns more); inside a loaded server both cost several times that. Here the await
 * uses am_send / tp_iternext, so a coroutine's return raises nothing, and the bookkeeping is a
 * few C field updates on the two records that own it.
 *
 * Everything here runs on the loop thread, under the GIL; the watchdog thread reads `running`
 * and `step_began` through the member descriptors, under the GIL too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static PyObject *perf_counter_func = NULL; /* time.perf_counter: the clock read here in C */
static PyObject *str_route_label = NULL;
static PyObject *str_throw = NULL;
static PyObject *str_close = NULL;
static PyObject *zero = NULL; /* 0.0 */

/* ---- the clock ------------------------------------------------------------------------- */

static int
read_clock(PyObject *clock, double *out)
{
    if (clock == perf_counter_func) {
#if PY_VERSION_HEX >= 0x030D0000
        PyTime_t t;
        if (PyTime_PerfCounter(&t) < 0) {
            return -1;
        }
        *out = PyTime_AsSecondsDouble(t);
#else
        _PyTime_t t = _PyTime_GetPerfCounter();
        *out = _PyTime_AsSecondsDouble(t);
#endif
        return 0;
    }
    PyObject *r = PyObject_CallNoArgs(clock);
    if (r == NULL) {
        return -1;
    }
    *out = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (*out == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* ---- the records ----------------------------------------------------------------------- */

/* Fields Python reads or writes per request are objects (T_OBJECT_EX), as in a class with
 * __slots__, so that CPython's specialising interpreter reads them as fast as the pure
 * records' slots; only what C alone touches per step is a C double. */
typedef struct {
    PyObject_HEAD
    double nested;
    double step_began;
    PyObject *stretch_id;
    PyObject *running;
    PyObject *current;
    PyObject *ran;
    PyObject *late_busy;
    PyObject *clock;
} StepClock;

typedef struct {
    PyObject_HEAD
    PyObject *timeline;
    PyObject *coro;
    PyObject *busy;
    PyObject *longest;
    PyObject *stretch_time;
    PyObject *folded;
    PyObject *stretch_id;
    PyObject *done;
} TimedAwait;

static PyTypeObject StepClockType;
static PyTypeObject TimedAwaitType;

/* ---- charging a step to its request ---------------------------------------------------- */

static int
add_late(StepClock *tl, PyObject *span, double seconds)
{
    /* A task that outlived its request: its route still pays (rare: no speed needed). */
    PyObject *route = PyObject_CallMethodNoArgs(span, str_route_label);
    if (route == NULL) {
        return -1;
    }
    double sum = seconds;
    PyObject *known = PyDict_GetItemWithError(tl->late_busy, route);
    if (known != NULL) {
        double before = PyFloat_AsDouble(known);
        if (before == -1.0 && PyErr_Occurred()) {
            Py_DECREF(route);
            return -1;
        }
        sum += before;
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(route);
        return -1;
    }
    PyObject *value = PyFloat_FromDouble(sum);
    if (value == NULL) {
        Py_DECREF(route);
        return -1;
    }
    int rc = PyDict_SetItem(tl->late_busy, route, value);
    Py_DECREF(value);
    Py_DECREF(route);
    return rc;
}

static int
append_ran(StepClock *tl, PyObject *span)
{
    if (PyList_CheckExact(tl->ran)) {
        return PyList_Append(tl->ran, span);
    }
    PyObject *r = PyObject_CallMethod(tl->ran, "append", "O", span);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static int
charge_generic(StepClock *tl, PyObject *span, double seconds)
{
    /* A span that is not a TimedAwait (a SpanBook written in Python): the same accounting,
     * through its attributes. */
    PyObject *v;
    double busy, longest, stretch_time, folded;
    int sid;
    int done;
#define GET_D(name, dst)                                   \
    v = PyObject_GetAttrString(span, name);                \
    if (v == NULL) return -1;                              \
    dst = PyFloat_AsDouble(v);                             \
    Py_DECREF(v);                                          \
    if (dst == -1.0 && PyErr_Occurred()) return -1;
#define SET_D(name, val)                                   \
    v = PyFloat_FromDouble(val);                           \
    if (v == NULL) return -1;                              \
    if (PyObject_SetAttrString(span, name, v) < 0) {       \
        Py_DECREF(v);                                      \
        return -1;                                         \
    }                                                      \
    Py_DECREF(v);
    GET_D("busy", busy);
    SET_D("busy", busy + seconds);
    GET_D("longest", longest);
    if (seconds > longest) {
        SET_D("longest", seconds);
    }
    v = PyObject_GetAttrString(span, "stretch_id");
    if (v == NULL) return -1;
    sid = PyObject_RichCompareBool(v, tl->stretch_id, Py_EQ);
    Py_DECREF(v);
    if (sid < 0) return -1;
    if (sid) {
        GET_D("stretch_time", stretch_time);
        SET_D("stretch_time", stretch_time + seconds);
        GET_D("folded", folded);
        if (folded != 0.0 && append_ran(tl, span) < 0) return -1;
    }
    else {
        if (PyObject_SetAttrString(span, "stretch_id", tl->stretch_id) < 0) return -1;
        SET_D("stretch_time", seconds);
        SET_D("folded", 0.0);
        if (append_ran(tl, span) < 0) return -1;
    }
#undef GET_D
#undef SET_D
    v = PyObject_GetAttrString(span, "done");
    if (v == NULL) return -1;
    done = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (done < 0) return -1;
    return done ? add_late(tl, span, seconds) : 0;
}

static int
get_double(PyObject *v, double *out)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a span field is not set");
        return -1;
    }
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    *out = PyFloat_AsDouble(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int
truth(PyObject *v)
{
    if (v == Py_True) return 1;
    if (v == Py_False || v == Py_None) return 0;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a span field is not set");
        return -1;
    }
    if (PyFloat_CheckExact(v)) return PyFloat_AS_DOUBLE(v) != 0.0;
    return PyObject_IsTrue(v);
}

static int
charge(StepClock *tl, PyObject *span, double seconds)
{
    if (!PyObject_TypeCheck(span, &TimedAwaitType)) {
        return charge_generic(tl, span, seconds);
    }
    TimedAwait *sp = (TimedAwait *)span;
    double busy, longest;
    if (get_double(sp->busy, &busy) < 0 || get_double(sp->longest, &longest) < 0) {
        return -1;
    }
    PyObject *value = PyFloat_FromDouble(seconds); /* one object, as in Python */
    if (value == NULL) {
        return -1;
    }
    PyObject *sum = PyFloat_FromDouble(busy + seconds);
    if (sum == NULL) {
        Py_DECREF(value);
        return -1;
    }
    Py_SETREF(sp->busy, sum);
    if (seconds > longest) {
        Py_SETREF(sp->longest, Py_NewRef(value));
    }
    if (sp->stretch_id == NULL) {
        Py_DECREF(value);
        PyErr_SetString(PyExc_AttributeError, "a span field is not set");
        return -1;
    }
    int same = sp->stretch_id == tl->stretch_id;
    if (!same) {
        same = PyObject_RichCompareBool(sp->stretch_id, tl->stretch_id, Py_EQ);
        if (same < 0) {
            Py_DECREF(value);
            return -1;
        }
    }
    if (same) {
        double before;
        if (get_double(sp->stretch_time, &before) < 0) {
            Py_DECREF(value);
            return -1;
        }
        sum = PyFloat_FromDouble(before + seconds);
        if (sum == NULL) {
            Py_DECREF(value);
            return -1;
        }
        Py_SETREF(sp->stretch_time, sum);
        int folded = truth(sp->folded);
        /* folded already: fold the new part too */
        if (folded < 0 || (folded && append_ran(tl, span) < 0)) {
            Py_DECREF(value);
            return -1;
        }
    }
    else {
        Py_XSETREF(sp->stretch_id, Py_NewRef(tl->stretch_id));
        Py_XSETREF(sp->stretch_time, Py_NewRef(value));
        Py_XSETREF(sp->folded, Py_NewRef(zero));
        if (append_ran(tl, span) < 0) {
            Py_DECREF(value);
            return -1;
        }
    }
    Py_DECREF(value);
    int done = truth(sp->done);
    if (done < 0) {
        return -1;
    }
    return done ? add_late(tl, span, seconds) : 0;
}

/* ---- one timed step -------------------------------------------------------------------- */

typedef struct {
    double outer_nested;
    double outer_began;
    double began;
    PyObject *outer_running; /* owned */
} Outer;

static PyObject *
call_current(StepClock *tl)
{
    if (tl->current == NULL || tl->current == Py_None) {
        Py_RETURN_NONE;
    }
    return PyObject_CallNoArgs(tl->current);
}

static int
step_enter(StepClock *tl, PyObject *span, Outer *o)
{
    if (tl->clock == NULL || tl->ran == NULL || tl->late_busy == NULL || tl->stretch_id == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a timeline field was deleted");
        return -1;
    }
    PyObject *running;
    if (span == Py_None) {
        running = call_current(tl);
        if (running == NULL) {
            return -1;
        }
    }
    else {
        running = Py_NewRef(span);
    }
    double began;
    if (read_clock(tl->clock, &began) < 0) {
        Py_DECREF(running);
        return -1;
    }
    o->outer_nested = tl->nested;
    o->outer_began = tl->step_began;
    o->outer_running = tl->running; /* the field's reference, now ours */
    tl->running = running;
    tl->nested = 0.0;
    tl->step_began = o->began = began;
    return 0;
}

/* The step has run (its exception, if any, is pending): charge it and restore the outer
 * step's state. Returns -1 with a new exception set if the accounting itself failed. */
static int
step_exit(StepClock *tl, PyObject *span, Outer *o)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    double end;
    int failed = read_clock(tl->clock, &end) < 0;
    if (failed) {
        end = o->began;
    }
    double elapsed = end - o->began;
    double seconds = elapsed - tl->nested; /* less the timed steps inside this one */
    tl->nested = o->outer_nested + elapsed;
    PyObject *inner = tl->running; /* let go of last, once the state is whole again */
    tl->running = o->outer_running;
    tl->step_began = o->outer_began; /* the outer step's, where it resumes */
    if (!failed) {
        if (span == Py_None) {
            PyObject *payer = call_current(tl);
            if (payer == NULL) {
                failed = 1;
            }
            else {
                if (payer != Py_None && charge(tl, payer, seconds) < 0) {
                    failed = 1;
                }
                Py_DECREF(payer);
            }
        }
        else if (charge(tl, span, seconds) < 0) {
            failed = 1;
        }
    }
    Py_XDECREF(inner);
    if (failed) {
        /* as a `finally` that raises: the new exception wins, the step's is its context */
        if (et != NULL) {
            PyErr_NormalizeException(&et, &ev, &etb);
            if (etb != NULL) {
                PyException_SetTraceback(ev, etb);
            }
            PyObject *nt, *nv, *ntb;
            PyErr_Fetch(&nt, &nv, &ntb);
            PyErr_NormalizeException(&nt, &nv, &ntb);
            PyException_SetContext(nv, ev); /* steals ev */
            Py_XDECREF(et);
            Py_XDECREF(etb);
            PyErr_Restore(nt, nv, ntb);
        }
        return -1;
    }
    PyErr_Restore(et, ev, etb);
    return 0;
}

static PyObject *
timed_call(StepClock *tl, PyObject *span, PyObject *callable, PyObject *const *args,
           Py_ssize_t nargs)
{
    Outer o;
    if (step_enter(tl, span, &o) < 0) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(callable, args, nargs, NULL);
    if (step_exit(tl, span, &o) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

/* ---- StepClock ------------------------------------------------------------------------- */

static PyObject *
StepClock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    StepClock *self = (StepClock *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->stretch_id = PyLong_FromLong(0);
    self->running = Py_NewRef(Py_None);
    self->current = Py_NewRef(Py_None);
    self->clock = Py_NewRef(perf_counter_func);
    self->ran = PyList_New(0);
    self->late_busy = PyDict_New();
    if (self->stretch_id == NULL || self->ran == NULL || self->late_busy == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
StepClock_traverse(StepClock *self, visitproc visit, void *arg)
{
    Py_VISIT(self->stretch_id);
    Py_VISIT(self->running);
    Py_VISIT(self->current);
    Py_VISIT(self->ran);
    Py_VISIT(self->late_busy);
    Py_VISIT(self->clock);
    return 0;
}

static int
StepClock_clear(StepClock *self)
{
    Py_CLEAR(self->stretch_id);
    Py_CLEAR(self->running);
    Py_CLEAR(self->current);
    Py_CLEAR(self->ran);
    Py_CLEAR(self->late_busy);
    Py_CLEAR(self->clock);
    return 0;
}

static void
StepClock_dealloc(StepClock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    StepClock_clear(self);
    tp->tp_free((PyObject *)self);
}

static PyObject *
StepClock_run_step(StepClock *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "run_step(span, step, *args)");
        return NULL;
    }
    return timed_call(self, args[0], args[1], args + 2, nargs - 2);
}

static PyObject *
StepClock_in_step(StepClock *self, PyObject *now_obj)
{
    double now = PyFloat_AsDouble(now_obj);
    if (now == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    double seconds = now - self->step_began - self->nested;
    return PyFloat_FromDouble(seconds > 0.0 ? seconds : 0.0);
}

static PyMethodDef StepClock_methods[] = {
    {"run_step", (PyCFunction)(void (*)(void))StepClock_run_step, METH_FASTCALL,
     "run_step(span, step, *args): run one step of a request's code and charge its loop time "
     "to span (None: whoever `current` says after the step)."},
    {"in_step", (PyCFunction)StepClock_in_step, METH_O,
     "in_step(now): seconds the timed step in progress has held the loop by now, less its "
     "nested steps."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef StepClock_members[] = {
    {"nested", T_DOUBLE, offsetof(StepClock, nested), 0, NULL},
    {"step_began", T_DOUBLE, offsetof(StepClock, step_began), 0, NULL},
    {"stretch_id", T_OBJECT_EX, offsetof(StepClock, stretch_id), 0, NULL},
    {"running", T_OBJECT_EX, offsetof(StepClock, running), 0, NULL},
    {"current", T_OBJECT_EX, offsetof(StepClock, current), 0, NULL},
    {"ran", T_OBJECT_EX, offsetof(StepClock, ran), 0, NULL},
    {"late_busy", T_OBJECT_EX, offsetof(StepClock, late_busy), 0, NULL},
    {"clock", T_OBJECT_EX, offsetof(StepClock, clock), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject StepClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stallwatch._cstep.StepClock",
    .tp_basicsize = sizeof(StepClock),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The step accounting of a timeline (compiled).",
    .tp_new = StepClock_new,
    .tp_traverse = (traverseproc)StepClock_traverse,
    .tp_clear = (inquiry)StepClock_clear,
    .tp_dealloc = (destructor)StepClock_dealloc,
    .tp_methods = StepClock_methods,
    .tp_members = StepClock_members,
};

/* ---- TimedAwait ------------------------------------------------------------------------ */

static int
check_timeline(TimedAwait *self)
{
    if (self->timeline == NULL || !PyObject_TypeCheck(self->timeline, &StepClockType)) {
        PyErr_SetString(PyExc_TypeError, "a timed await needs a timeline (StepClock)");
        return -1;
    }
    if (self->coro == NULL || self->coro == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "this request has ended");
        return -1;
    }
    return 0;
}

static PySendResult
TimedAwait_am_send(TimedAwait *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (check_timeline(self) < 0) {
        return PYGEN_ERROR;
    }
    /* Held for the step: it may release the span, which lets go of its coroutine. */
    StepClock *tl = (StepClock *)Py_NewRef(self->timeline);
    PyObject *coro = Py_NewRef(self->coro);
    Outer o;
    PySendResult status = PYGEN_ERROR;
    if (step_enter(tl, (PyObject *)self, &o) == 0) {
        status = PyIter_Send(coro, arg, result);
        if (step_exit(tl, (PyObject *)self, &o) < 0) {
            Py_CLEAR(*result);
            status = PYGEN_ERROR;
        }
    }
    Py_DECREF(coro);
    Py_DECREF(tl);
    return status;
}

static void
set_stop_iteration(PyObject *value)
{
    /* StopIteration(value), built so that a tuple is the value, not the arguments. */
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

static PyObject *
TimedAwait_iternext(TimedAwait *self)
{
    PyObject *result;
    PySendResult status = TimedAwait_am_send(self, Py_None, &result);
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result != Py_None) {
            set_stop_iteration(result); /* None: exhausted, nothing to raise */
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
TimedAwait_send(TimedAwait *self, PyObject *value)
{
    PyObject *result;
    PySendResult status = TimedAwait_am_send(self, value, &result);
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            set_stop_iteration(result);
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
TimedAwait_throw(TimedAwait *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(typ[, val[, tb]])");
        return NULL;
    }
    if (check_timeline(self) < 0) {
        return NULL;
    }
    PyObject *throw = PyObject_GetAttr(self->coro, str_throw);
    if (throw == NULL) {
        return NULL;
    }
    /* throw(typ, None, None) is throw(typ), as the Python implementation calls it */
    Py_ssize_t n = nargs;
    while (n > 1 && args[n - 1] == Py_None) {
        n--;
    }
    PyObject *timeline = Py_NewRef(self->timeline);
    PyObject *result = timed_call((StepClock *)timeline, (PyObject *)self, throw, args, n);
    Py_DECREF(throw);
    Py_DECREF(timeline);
    return result;
}

static PyObject *
TimedAwait_close(TimedAwait *self, PyObject *Py_UNUSED(ignored))
{
    if (self->coro == NULL || self->coro == Py_None) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethodNoArgs(self->coro, str_close);
}

static PyObject *
TimedAwait_self(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *
TimedAwait_wrap(TimedAwait *self, PyObject *awaitable)
{
    PyObject *coro;
    if (PyCoro_CheckExact(awaitable)) {
        coro = Py_NewRef(awaitable);
    }
    else {
        coro = PyObject_CallMethod(awaitable, "__await__", NULL);
        if (coro == NULL) {
            return NULL;
        }
    }
    Py_XSETREF(self->coro, coro);
    return Py_NewRef((PyObject *)self);
}

static PyObject *
TimedAwait_drop_coro(TimedAwait *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->coro);
    Py_RETURN_NONE;
}

static PyObject *
coro_attr(TimedAwait *self, const char *name, PyObject *dflt)
{
    if (self->coro == NULL) {
        return Py_NewRef(dflt);
    }
    PyObject *v = PyObject_GetAttrString(self->coro, name);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        return Py_NewRef(dflt);
    }
    return v;
}

static PyObject *
TimedAwait_cr_frame(TimedAwait *self, void *c)
{
    return coro_attr(self, "cr_frame", Py_None);
}

static PyObject *
TimedAwait_cr_await(TimedAwait *self, void *c)
{
    return coro_attr(self, "cr_await", Py_None);
}

static PyObject *
TimedAwait_cr_code(TimedAwait *self, void *c)
{
    return coro_attr(self, "cr_code", Py_None);
}

static PyObject *
TimedAwait_cr_running(TimedAwait *self, void *c)
{
    PyObject *v = coro_attr(self, "cr_running", Py_False);
    if (v == NULL) {
        return NULL;
    }
    int truth = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (truth < 0) {
        return NULL;
    }
    return PyBool_FromLong(truth);
}

static PyObject *
TimedAwait_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* A request with no step yet: nothing charged, no stretch (as RequestSpan sets). */
    TimedAwait *self = (TimedAwait *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->timeline = Py_NewRef(Py_None);
    self->busy = Py_NewRef(zero);
    self->longest = Py_NewRef(zero);
    self->stretch_time = Py_NewRef(zero);
    self->folded = Py_NewRef(zero);
    self->stretch_id = PyLong_FromLong(-1);
    self->done = Py_NewRef(Py_False);
    if (self->stretch_id == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
TimedAwait_traverse(TimedAwait *self, visitproc visit, void *arg)
{
    Py_VISIT(self->timeline);
    Py_VISIT(self->coro);
    Py_VISIT(self->busy);
    Py_VISIT(self->longest);
    Py_VISIT(self->stretch_time);
    Py_VISIT(self->folded);
    Py_VISIT(self->stretch_id);
    Py_VISIT(self->done);
    return 0;
}

static int
TimedAwait_clear(TimedAwait *self)
{
    Py_CLEAR(self->timeline);
    Py_CLEAR(self->coro);
    Py_CLEAR(self->busy);
    Py_CLEAR(self->longest);
    Py_CLEAR(self->stretch_time);
    Py_CLEAR(self->folded);
    Py_CLEAR(self->stretch_id);
    Py_CLEAR(self->done);
    return 0;
}

static void
TimedAwait_dealloc(TimedAwait *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    TimedAwait_clear(self);
    tp->tp_free((PyObject *)self);
}

static PyMethodDef TimedAwait_methods[] = {
    {"send", (PyCFunction)TimedAwait_send, METH_O, "Resume the app coroutine, timed."},
    {"throw", (PyCFunction)(void (*)(void))TimedAwait_throw, METH_FASTCALL,
     "Throw into the app coroutine, timed."},
    {"close", (PyCFunction)TimedAwait_close, METH_NOARGS, "Close the app coroutine."},
    {"wrap", (PyCFunction)TimedAwait_wrap, METH_O,
     "wrap(awaitable): time the steps of this awaitable; returns self."},
    {"drop_coro", (PyCFunction)TimedAwait_drop_coro, METH_NOARGS,
     "Let go of the app coroutine (the request has ended)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef TimedAwait_members[] = {
    {"timeline", T_OBJECT_EX, offsetof(TimedAwait, timeline), 0, NULL},
    {"_coro", T_OBJECT, offsetof(TimedAwait, coro), READONLY, NULL},
    {"busy", T_OBJECT_EX, offsetof(TimedAwait, busy), 0, NULL},
    {"longest", T_OBJECT_EX, offsetof(TimedAwait, longest), 0, NULL},
    {"stretch_time", T_OBJECT_EX, offsetof(TimedAwait, stretch_time), 0, NULL},
    {"folded", T_OBJECT_EX, offsetof(TimedAwait, folded), 0, NULL},
    {"stretch_id", T_OBJECT_EX, offsetof(TimedAwait, stretch_id), 0, NULL},
    {"done", T_OBJECT_EX, offsetof(TimedAwait, done), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef TimedAwait_getset[] = {
    {"cr_frame", (getter)TimedAwait_cr_frame, NULL, NULL, NULL},
    {"cr_await", (getter)TimedAwait_cr_await, NULL, NULL, NULL},
    {"cr_code", (getter)TimedAwait_cr_code, NULL, NULL, NULL},
    {"cr_running", (getter)TimedAwait_cr_running, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods TimedAwait_async = {
    .am_await = (unaryfunc)TimedAwait_self,
    .am_send = (sendfunc)TimedAwait_am_send,
};

static PyTypeObject TimedAwaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stallwatch._cstep.TimedAwait",
    .tp_basicsize = sizeof(TimedAwait),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The timed await of a request's own coroutine (compiled).",
    .tp_new = TimedAwait_new,
    .tp_traverse = (traverseproc)TimedAwait_traverse,
    .tp_clear = (inquiry)TimedAwait_clear,
    .tp_dealloc = (destructor)TimedAwait_dealloc,
    .tp_as_async = &TimedAwait_async,
    .tp_iter = (getiterfunc)TimedAwait_self,
    .tp_iternext = (iternextfunc)TimedAwait_iternext,
    .tp_methods = TimedAwait_methods,
    .tp_members = TimedAwait_members,
    .tp_getset = TimedAwait_getset,
};

/* ---- the module ------------------------------------------------------------------------ */

static struct PyModuleDef cstep_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stallwatch._cstep",
    .m_doc = "stallwatch's step timing, compiled (see stallwatch.loop.steps).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__cstep(void)
{
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) {
        return NULL;
    }
    perf_counter_func = PyObject_GetAttrString(time, "perf_counter");
    Py_DECREF(time);
    if (perf_counter_func == NULL) {
        return NULL;
    }
    str_route_label = PyUnicode_InternFromString("route_label");
    str_throw = PyUnicode_InternFromString("throw");
    str_close = PyUnicode_InternFromString("close");
    zero = PyFloat_FromDouble(0.0);
    if (str_route_label == NULL || str_throw == NULL || str_close == NULL || zero == NULL) {
        return NULL;
    }
    if (PyType_Ready(&StepClockType) < 0 || PyType_Ready(&TimedAwaitType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&cstep_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "StepClock", (PyObject *)&StepClockType) < 0 ||
        PyModule_AddObjectRef(m, "TimedAwait", (PyObject *)&TimedAwaitType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
