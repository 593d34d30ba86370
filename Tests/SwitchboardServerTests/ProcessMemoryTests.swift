import Testing

@testable import SwitchboardServer

/// Where the default of `limits.max-pending-bytes-total` looks for a cgroup's memory limit.
@Suite struct ProcessMemoryTests {
    @Test func cgroupV2LimitsAreReadFromTheProcessCgroupUpToTheRoot() {
        #expect(
            ProcessMemory.limitFiles(procCgroup: "0::/system.slice/switchboard.service\n", root: "/c")
                == ["/c/system.slice/switchboard.service/memory.max", "/c/system.slice/memory.max", "/c/memory.max"])
        #expect(ProcessMemory.limitFiles(procCgroup: "0::/\n", root: "/c") == ["/c/memory.max"])
    }

    @Test func cgroupV1LimitsAreReadFromTheMemoryHierarchy() {
        let procCgroup = "9:name=systemd:/\n4:memory:/process_api/85a4\n3:cpuset:/\n0::/\n"
        #expect(
            ProcessMemory.limitFiles(procCgroup: procCgroup, root: "/c")
                == [
                    "/c/memory/process_api/85a4/memory.limit_in_bytes", "/c/memory/process_api/memory.limit_in_bytes",
                    "/c/memory/memory.limit_in_bytes", "/c/memory.max",
                ])
        #expect(ProcessMemory.limitFiles(procCgroup: "5:cpu,memory:/x\n", root: "/c") == ["/c/memory/x/memory.limit_in_bytes", "/c/memory/memory.limit_in_bytes"])
    }

    @Test func theDefaultIsAtMostTheMachinesMemory() {
        #expect(ProcessMemory.available > 0)
        #expect(Limits().maxPendingBytesTotal == ProcessMemory.available / 2)
    }
}
