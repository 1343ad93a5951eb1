# Sourced by the scripts in this folder: installs the Debian packages that are missing (as root, with
# apt-get; with sudo when not root). Usage: require_packages pkg...
require_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "sqz: installing missing packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What building sqz's tests, examples, benchmarks and tools needs on Debian 12.
SQZ_BUILD_PACKAGES=(ca-certificates g++ make cmake libeigen3-dev catch2 nlohmann-json3-dev libcli11-dev)
# What the fuzzers (scripts/fuzz.sh) need in addition: clang with libFuzzer's runtime.
SQZ_FUZZ_PACKAGES=(clang libclang-rt-14-dev)
# What the Clang build of scripts/test.sh needs in addition: clang and its OpenMP runtime.
SQZ_CLANG_PACKAGES=(clang libomp-dev)
