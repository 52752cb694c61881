/* The serve-sim engine for the `mla` tool; the code lives in serve_sim_engine.h. */
#include "serve_sim_engine.h"
