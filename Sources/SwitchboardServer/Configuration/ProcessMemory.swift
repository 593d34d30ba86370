import Foundation

/// The memory this process may use: the machine's, or its cgroup's limit (a container's) when
/// lower. The default of `limits.max-pending-bytes-total` is half of it.
enum ProcessMemory {
    static let available: Int = {
        var memory = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        // cgroup v2, then v1; "max" (no limit) does not parse.
        for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
                let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), limit > 0
            {
                memory = min(memory, limit)
            }
        }
        return memory
    }()
}
