// swift-tools-version:6.2
import Foundation
import PackageDescription

let settings: [SwiftSetting] = [
    .strictMemorySafety(),
    .treatWarning("StrictMemorySafety", as: .error),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "swift-vtpm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vtpmd", targets: ["vtpmd"]),
        .executable(name: "vtpmctl", targets: ["vtpmctl"]),
        .executable(name: "vtpm-state", targets: ["vtpm-state"]),
        .library(name: "VTPM", targets: ["TPMWire", "VMIdentity", "StateStore", "TPMEngine", "VTPMServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibTPMS",
            pkgConfig: "libtpms",
            providers: [.apt(["libtpms-dev"])]
        ),
        .target(
            name: "CVTPMShims",
            linkerSettings: [.linkedLibrary("seccomp"), .linkedLibrary("sqlite3"), .linkedLibrary("fuse3")]
        ),
        .target(name: "_VTPMPosix", dependencies: ["CVTPMShims"], swiftSettings: settings),
        .target(name: "TPMWire", swiftSettings: settings),
        .target(
            name: "VMIdentity",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: settings
        ),
        .target(name: "TPMEngine", dependencies: ["CLibTPMS"], swiftSettings: settings),
        .target(
            name: "StateStore",
            dependencies: [
                "_VTPMPosix", "TPMWire", "VMIdentity",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .target(
            name: "CASigner",
            dependencies: [
                "EndorsementCA", "Registry", "TPMWire", "VMIdentity", "_VTPMPosix",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .target(
            name: "CloneRekey",
            dependencies: [
                "TPMEngine", "TPMWire", "StateStore", "Registry", "EndorsementCA", "VMIdentity", "_VTPMPosix",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .target(
            name: "VTPMServer",
            dependencies: [
                "_VTPMPosix", "TPMWire", "TPMEngine", "StateStore", "CloneRekey", "EndorsementCA", "Registry",
                "VMIdentity", "CASigner",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "vtpmd",
            dependencies: [
                "VTPMServer", "StateStore", "TPMWire", "CloneRekey",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: settings
        ),
        .target(
            name: "StateTool",
            dependencies: [
                "VTPMServer", "_VTPMPosix", "TPMEngine", "TPMWire", "StateStore", "CloneRekey", "EndorsementCA",
                "Registry", "VMIdentity", "CASigner",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "vtpm-state",
            dependencies: [
                "StateTool", "CloneRekey", "VTPMServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: settings
        ),
        .testTarget(
            name: "StateToolTests",
            dependencies: [
                "StateTool", "TestSupport", "StateStore", "EndorsementCA", "Registry", "TPMWire", "VMIdentity",
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "vtpmctl",
            dependencies: [
                "TPMWire", "_VTPMPosix",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "vtpm-demo",
            dependencies: ["TestSupport"],
            path: "qemu/demo",
            swiftSettings: settings
        ),
        .target(
            name: "TestSupport",
            dependencies: ["_VTPMPosix", "TPMWire"],
            path: "Tests/TestSupport",
            swiftSettings: settings
        ),
        .target(
            name: "Registry",
            dependencies: [
                "VMIdentity", "TPMWire", "_VTPMPosix",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .testTarget(
            name: "RegistryTests",
            dependencies: ["Registry", "VMIdentity", "TestSupport", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: settings
        ),
        .testTarget(
            name: "CASignerTests",
            dependencies: [
                "CASigner", "EndorsementCA", "Registry", "VMIdentity", "TestSupport", "_VTPMPosix",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .testTarget(name: "TPMWireTests", dependencies: ["TPMWire"], swiftSettings: settings),
        .testTarget(name: "TPMEngineTests", dependencies: ["TPMEngine"], swiftSettings: settings),
        .testTarget(name: "VMIdentityTests", dependencies: ["VMIdentity"], swiftSettings: settings),
        .testTarget(
            name: "VTPMServerTests",
            dependencies: [
                "VTPMServer", "TPMEngine", "TPMWire", "TestSupport", "_VTPMPosix",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .testTarget(
            name: "CloneRekeyTests",
            dependencies: [
                "CloneRekey", "TPMEngine", "TPMWire", "Registry", "VMIdentity", "StateStore", "TestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: settings
        ),
        .testTarget(
            name: "StateStoreTests",
            dependencies: [
                "StateStore", "VMIdentity", "TestSupport", "TPMWire", .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: settings
        ),
        .target(
            name: "EndorsementCA",
            dependencies: [
                "TPMWire", "_VTPMPosix", "VMIdentity",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            exclude: ["README.md"],
            swiftSettings: settings
        ),
        .testTarget(
            name: "EndorsementCATests",
            dependencies: [
                "EndorsementCA", "VMIdentity", "TestSupport",
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: settings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "TestSupport", "TPMWire", "StateStore", "EndorsementCA", "Registry", "VMIdentity", "CASigner",
            ],
            swiftSettings: settings
        ),
    ]
)

// The fuzz harness (`make fuzz`, Fuzz/README.md) is part of the package only when VTPM_FUZZ is set, so that the
// normal build and `make test` never compile it.
if ProcessInfo.processInfo.environment["VTPM_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "vtpm-fuzz",
            dependencies: ["TPMWire", "TPMEngine", "StateStore", "CloneRekey", "EndorsementCA", "CASigner"],
            path: "Fuzz/vtpm-fuzz"
        )
    )
}
