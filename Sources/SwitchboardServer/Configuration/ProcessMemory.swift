import Foundation

/// The memory this process may use: the machine's, or its cgroup's limit (a container's, a
/// systemd `MemoryMax=`) when lower. The default of `limits.max-pending-bytes-total` is half of it.
enum ProcessMemory {
    static let available: Int = {
        var memory = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        let files = limitFiles(procCgroup: (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? "")
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8),
                let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), limit > 0
            else { continue }  // absent, or "max" (no limit)
            memory = min(memory, limit)
        }
        return memory
    }()

    /// The files holding the memory limits of the process's cgroup and of every cgroup above
    /// it, from `/proc/self/cgroup`: v2 (`0::<path>`) `memory.max`, v1 (`<n>:memory:<path>`)
    /// `memory/…/memory.limit_in_bytes`.
    static func limitFiles(procCgroup: String, root: String = "/sys/fs/cgroup") -> [String] {
        var files: [String] = []
        for line in procCgroup.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if fields[0] == "0", fields[1].isEmpty {
                files += ancestry(String(fields[2])).map { root + $0 + "/memory.max" }
            } else if fields[1].split(separator: ",").contains("memory") {
                files += ancestry(String(fields[2])).map { root + "/memory" + $0 + "/memory.limit_in_bytes" }
            }
        }
        return files
    }

    /// `/a/b` → `/a/b`, `/a`, `` (the root).
    private static func ancestry(_ path: String) -> [String] {
        var result: [String] = []
        var path = path.hasSuffix("/") ? String(path.dropLast()) : path
        while !path.isEmpty {
            result.append(path)
            guard let slash = path.lastIndex(of: "/") else { break }
            path = String(path[..<slash])
        }
        result.append("")
        return result
    }
}
