// Public API of safe-py-runner, whole: run untrusted Python snippets in supervised, hardened workers.
#pragma once

#include "spr/policy.hpp"
#include "spr/result.hpp"
#include "spr/runner.hpp"
#include "spr/version.hpp"
