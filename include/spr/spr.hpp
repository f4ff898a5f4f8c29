// Public API of safe-py-runner, whole: run untrusted Python snippets in supervised, hardened workers.
#pragma once

#include "spr/host.hpp"
#include "spr/policy.hpp"
#include "spr/result.hpp"
#include "spr/run_control.hpp"
#include "spr/runner.hpp"
#include "spr/session.hpp"
#include "spr/version.hpp"
