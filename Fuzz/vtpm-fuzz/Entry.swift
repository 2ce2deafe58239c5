#if FUZZING
/// libFuzzer's driver, started from SwiftPM's renamed entry point (`vtpm_fuzz_main`): the target is named by
/// `VTPM_FUZZ_TARGET`, every argument goes to libFuzzer.
@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

@_silgen_name("getenv")
func environment(_ name: UnsafePointer<CChar>) -> UnsafeMutablePointer<CChar>?

nonisolated(unsafe) var selected: (@Sendable ([UInt8]) -> Void)? = nil

@_cdecl("vtpm_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    guard let name = environment("VTPM_FUZZ_TARGET").map({ String(cString: $0) }), let target = Targets.all[name]
    else {
        print("set VTPM_FUZZ_TARGET to one of: \(Targets.all.keys.sorted().joined(separator: " "))")
        return 2
    }
    selected = target
    var count = argc
    var vector = argv
    return runDriver(&count, &vector) { data, size in
        let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        selected?(bytes)
        return 0
    }
}
#else
import Foundation

/// Without the fuzzer: `vtpm-fuzz TARGET FILE|DIRECTORY...` runs each input through the target once (the
/// regression run of the kept inputs, and of a crash file a fuzzing run wrote).
@main
struct Replay {
    static func main() throws {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "--seeds", arguments.count == 3 {
            let name = arguments[arguments.startIndex + 1]
            let directory = arguments[arguments.startIndex + 2]
            let seeds = Targets.seeds[name]?() ?? []
            for (index, seed) in seeds.enumerated() {
                try Data(seed).write(to: URL(fileURLWithPath: "\(directory)/seed-\(name)-\(index)"))
            }
            print("\(name): \(seeds.count) seeds written")
            return
        }
        guard let name = arguments.first, let target = Targets.all[name] else {
            print(
                "usage: vtpm-fuzz TARGET FILE|DIRECTORY... (targets: \(Targets.all.keys.sorted().joined(separator: " ")))"
            )
            exit(2)
        }
        var count = 0
        for path in arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            let files =
                isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { "\(path)/\($0)" } : [path]
            for file in files {
                target([UInt8](try Data(contentsOf: URL(fileURLWithPath: file))))
                count += 1
            }
        }
        print("\(name): \(count) inputs, no crash")
    }
}
#endif
