// The CLI's exit statuses (sysexits.h values where one fits), spelled once for every command.
#pragma once

namespace spr::cli {

constexpr int kExitUsage = 64;         // EX_USAGE: an unknown command or option
constexpr int kExitData = 65;          // EX_DATAERR: unreadable or invalid input, JSON, policy or argument
constexpr int kExitUnavailable = 69;   // EX_UNAVAILABLE: no worker can be started
constexpr int kExitIo = 74;            // EX_IOERR: an output could not be written
constexpr int kExitInterrupted = 130;  // 128 + SIGINT: stopped by SIGINT or SIGTERM

}  // namespace spr::cli
