<#
.SYNOPSIS
  Exports known-good Windows system files from a healthy reference machine
  for defib's known-good store.

.DESCRIPTION
  Run this on a healthy PC with the same Windows product, build, service
  pack and architecture as the broken ones (for DAT 5958: Windows XP SP3,
  x86). It copies the files listed in -Paths, records the machine's
  Windows version and each file's version, size and SHA-256 in
  defib-export.json, and writes both into one zip. On a build machine,
  `defib store import FILE.zip` checks the zip and adds the files to
  payloads/store (docs/store-format.md).

  It only reads the system: the single thing it writes is the -Out file
  (or folder). It refuses to overwrite an existing one.

  Run it from an elevated prompt:

    powershell -ExecutionPolicy Bypass -File export-known-good.ps1 -Out C:\ref-xp-sp3.zip

  On 64-bit Windows run the 64-bit PowerShell: a 32-bit one sees
  SysWOW64 in place of System32 and the script stops rather than export
  the wrong files.

  Windows XP / Server 2003: install PowerShell 2.0 (KB968930). It has no
  .NET 4.5 zip support, so the script writes an unpacked folder instead
  of a zip (-Out C:\ref-xp-sp3 gives the folder C:\ref-xp-sp3); copy
  that folder to the build machine and run `defib store import FOLDER`.
  The script sticks to PowerShell 2.0 syntax for this reason.

.PARAMETER Out
  The zip to write (or, without .NET 4.5, the folder; a trailing .zip is
  dropped from its name).

.PARAMETER Paths
  Files to export, relative to the system drive root. A path starting
  with Windows\ means the Windows folder, whatever it is called here.
  The default is what the shipped playbooks restore.
#>
param(
    [Parameter(Mandatory = $true)]
    [string]$Out,
    [string[]]$Paths = @('Windows\System32\svchost.exe')
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 2.0

# The manifest format version defib's importer reads (docs/store-format.md).
$Schema = 1

# Hand-written JSON: ConvertTo-Json arrived in PowerShell 3.0 and formats
# differently between versions; the importer wants exactly this.
function Format-JsonString($s) {
    if ($null -eq $s) { return 'null' }
    $sb = New-Object System.Text.StringBuilder
    [void]$sb.Append('"')
    foreach ($c in ([string]$s).ToCharArray()) {
        $code = [int]$c
        if ($c -eq [char]'"') { [void]$sb.Append('\"') }
        elseif ($c -eq [char]'\') { [void]$sb.Append('\\') }
        elseif ($code -lt 0x20) { [void]$sb.Append(('\u{0:x4}' -f $code)) }
        else { [void]$sb.Append($c) }
    }
    [void]$sb.Append('"')
    return $sb.ToString()
}

function Format-JsonNumber($n) {
    if ($null -eq $n) { return 'null' }
    return ([string][int64]$n)
}

function Get-Sha256Hex([string]$file) {
    # Get-FileHash is PowerShell 4.0+; the .NET class works everywhere.
    if (Get-Command Get-FileHash -ErrorAction SilentlyContinue) {
        return (Get-FileHash -Algorithm SHA256 -LiteralPath $file).Hash.ToLowerInvariant()
    }
    $sha = [System.Security.Cryptography.SHA256]::Create()
    $stream = [System.IO.File]::Open($file, 'Open', 'Read', 'ReadWrite')
    try {
        $bytes = $sha.ComputeHash($stream)
    } finally {
        $stream.Close()
    }
    return ([System.BitConverter]::ToString($bytes) -replace '-', '').ToLowerInvariant()
}

function Get-RegValue($key, [string]$name) {
    $p = Get-ItemProperty -Path $key -ErrorAction SilentlyContinue
    if ($null -eq $p) { return $null }
    $m = $p.PSObject.Properties[$name]
    if ($null -eq $m) { return $null }
    return $m.Value
}

# --- the machine -----------------------------------------------------------

if ($env:PROCESSOR_ARCHITEW6432) {
    throw ('This is a 32-bit PowerShell on 64-bit Windows: System32 would be ' +
        'redirected to SysWOW64. Run C:\Windows\Sysnative\WindowsPowerShell\v1.0\powershell.exe instead.')
}
switch ($env:PROCESSOR_ARCHITECTURE) {
    'x86' { $arch = 'x86' }
    'AMD64' { $arch = 'x64' }
    'ARM64' { $arch = 'arm64' }
    default { throw "Unsupported processor architecture $($env:PROCESSOR_ARCHITECTURE)" }
}

$cv = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
$product = Get-RegValue $cv 'ProductName'
# CurrentBuildNumber, not CurrentBuild: on XP CurrentBuild holds
# "1.511.1 () (Obsolete data - do not use)".
$build = Get-RegValue $cv 'CurrentBuildNumber'
$ubr = Get-RegValue $cv 'UBR'
$servicePack = Get-RegValue $cv 'CSDVersion'
if ($servicePack -eq '') { $servicePack = $null }
if (-not $product -or -not $build) {
    throw "Cannot read ProductName/CurrentBuildNumber under $cv"
}
$build = [int]$build
if ($null -ne $ubr) { $ubr = [int64]$ubr }
$computer = $env:COMPUTERNAME
$exported = (Get-Date).ToUniversalTime().ToString("yyyy'-'MM'-'dd'T'HH':'mm':'ss'Z'")

$drive = $env:SystemDrive + '\'
$windowsDirName = Split-Path -Leaf $env:SystemRoot

# --- the files -------------------------------------------------------------

$files = @()
foreach ($p in $Paths) {
    $rel = ($p -replace '/', '\').TrimStart('\')
    if ($rel -match '(^|\\)\.\.(\\|$)' -or $rel -match ':') {
        throw "Path $p must be relative to the system drive, without '..' or a drive letter"
    }
    if ($rel -match '^Windows\\') {
        $rel = $windowsDirName + $rel.Substring(7)
    }
    $full = Join-Path $drive $rel
    if (-not (Test-Path -LiteralPath $full -PathType Leaf)) {
        throw "$full does not exist on this machine; is it the right reference?"
    }
    $item = Get-Item -LiteralPath $full
    $vi = $item.VersionInfo
    $version = $null
    if ($vi -and ($vi.FileMajorPart -or $vi.FileMinorPart -or $vi.FileBuildPart -or $vi.FilePrivatePart)) {
        $version = '{0}.{1}.{2}.{3}' -f $vi.FileMajorPart, $vi.FileMinorPart, $vi.FileBuildPart, $vi.FilePrivatePart
    }
    $files += New-Object PSObject -Property @{
        Path = $rel
        Full = $full
        FileVersion = $version
        Sha256 = (Get-Sha256Hex $full)
        Size = [int64]$item.Length
        ZipPath = 'files/' + ($rel -replace '\\', '/')
    }
}

# --- the manifest ----------------------------------------------------------

$nl = "`r`n"
$entries = @()
foreach ($f in $files) {
    $entries += ('    {' + $nl +
        '      "path": ' + (Format-JsonString $f.Path) + ',' + $nl +
        '      "file_version": ' + (Format-JsonString $f.FileVersion) + ',' + $nl +
        '      "sha256": ' + (Format-JsonString $f.Sha256) + ',' + $nl +
        '      "size": ' + (Format-JsonNumber $f.Size) + ',' + $nl +
        '      "zip_path": ' + (Format-JsonString $f.ZipPath) + $nl +
        '    }')
}
$json = '{' + $nl +
    '  "schema": ' + $Schema + ',' + $nl +
    '  "product": ' + (Format-JsonString $product) + ',' + $nl +
    '  "build": ' + (Format-JsonNumber $build) + ',' + $nl +
    '  "ubr": ' + (Format-JsonNumber $ubr) + ',' + $nl +
    '  "service_pack": ' + (Format-JsonString $servicePack) + ',' + $nl +
    '  "arch": ' + (Format-JsonString $arch) + ',' + $nl +
    '  "computer": ' + (Format-JsonString $computer) + ',' + $nl +
    '  "exported": ' + (Format-JsonString $exported) + ',' + $nl +
    '  "files": [' + $nl +
    ($entries -join (',' + $nl)) + $nl +
    '  ]' + $nl +
    '}' + $nl
# UTF-8 without a BOM (Set-Content -Encoding UTF8 would add one).
$utf8 = New-Object System.Text.UTF8Encoding $false
$jsonBytes = $utf8.GetBytes($json)

# --- the output ------------------------------------------------------------

$haveZip = $false
try {
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    $haveZip = $true
} catch {
    Write-Warning '.NET 4.5 zip support is missing: writing an unpacked folder instead.'
}

if ($haveZip) {
    if (Test-Path -LiteralPath $Out) { throw "$Out exists; pass another -Out or delete it" }
    $zip = [System.IO.Compression.ZipFile]::Open($Out, 'Create')
    try {
        # Entry names use '/', as the zip format says (APPNOTE 4.4.17);
        # defib refuses '\' in names.
        $e = $zip.CreateEntry('defib-export.json')
        $s = $e.Open()
        try { $s.Write($jsonBytes, 0, $jsonBytes.Length) } finally { $s.Close() }
        foreach ($f in $files) {
            [void][System.IO.Compression.ZipFileExtensions]::CreateEntryFromFile(
                $zip, $f.Full, $f.ZipPath, [System.IO.Compression.CompressionLevel]::Optimal)
        }
    } finally {
        $zip.Dispose()
    }
    $where = $Out
} else {
    $dir = $Out -replace '\.zip$', ''
    if (Test-Path -LiteralPath $dir) { throw "$dir exists; pass another -Out or delete it" }
    [void](New-Item -ItemType Directory -Path $dir)
    [System.IO.File]::WriteAllBytes((Join-Path $dir 'defib-export.json'), $jsonBytes)
    foreach ($f in $files) {
        $dest = Join-Path $dir ($f.ZipPath -replace '/', '\')
        [void](New-Item -ItemType Directory -Force -Path (Split-Path -Parent $dest))
        Copy-Item -LiteralPath $f.Full -Destination $dest
    }
    $where = $dir
}

Write-Host ("Exported {0} file(s) from {1} build {2} {3} to {4}" -f $files.Count, $product, $build, $arch, $where)
Write-Host 'On the build machine: defib store import <that file or folder>'
