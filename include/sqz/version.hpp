// sqz/version.hpp - library version.
#pragma once

#define SQZ_VERSION_MAJOR 0
#define SQZ_VERSION_MINOR 1
#define SQZ_VERSION_PATCH 0

namespace sqz {
inline constexpr const char* version_string = "0.1.0";
}  // namespace sqz
