; Inno Setup script of the OpenATP Windows installer. UNTESTED: written on Linux, where it
; cannot run; .github/workflows/package.yml builds it on windows-latest.
;
;   pyinstaller --noconfirm --distpath build\pyi\dist --workpath build\pyi\work packaging\openatp.spec
;   iscc /DAppVersion=0.1.0 /DBundleDir=build\pyi\dist\openatp packaging\windows\openatp.iss
;
; Per-machine install into Program Files (read-only to planners); user data goes to
; %APPDATA%\OpenATP (core/paths.py) and is never touched by the uninstaller.
#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef BundleDir
  #define BundleDir "..\..\build\pyi\dist\openatp"
#endif

[Setup]
AppId={{6F1C2B1E-4A53-4E0B-9A40-0C0F5A7E0A11}
AppName=OpenATP
AppVersion={#AppVersion}
AppPublisher=OpenATP maintainers
DefaultDirName={autopf}\OpenATP
DefaultGroupName=OpenATP
DisableProgramGroupPage=yes
PrivilegesRequired=admin
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=openatp-{#AppVersion}-windows-x64-setup
Compression=lzma2/max
SolidCompression=yes
; Close a running OpenATP before files are replaced (installing over a running instance).
CloseApplications=yes
RestartApplications=no
UninstallDisplayName=OpenATP {#AppVersion}
; Code signing: a placeholder. Define a sign tool in the Inno Setup IDE or on the command line,
;   iscc /Ssigntool="signtool.exe sign /fd sha256 /tr http://timestamp.example /td sha256 /f $qcert.pfx$q $f" ...
; and uncomment:
; SignTool=signtool
; SignedUninstaller=yes

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\OpenATP"; Filename: "{app}\OpenATP.exe"; Parameters: "gui"
Name: "{group}\OpenATP (demo patient)"; Filename: "{app}\OpenATP.exe"; Parameters: "gui ""{app}\_internal\resources\demo\pt_demo.npz"""
Name: "{group}\Uninstall OpenATP"; Filename: "{uninstallexe}"

[Registry]
; openatp.exe (the console twin) on PATH for IT scripts
Root: HKLM; Subkey: "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"; ValueType: expandsz; \
  ValueName: "Path"; ValueData: "{olddata};{app}"; Check: NeedsAddPath(ExpandConstant('{app}'))

[UninstallDelete]
; only the installation folder; %APPDATA%\OpenATP (templates, projects, logs) stays
Type: filesandordirs; Name: "{app}"

[Code]
function NeedsAddPath(Param: string): boolean;
var
  OrigPath: string;
begin
  if not RegQueryStringValue(HKEY_LOCAL_MACHINE,
    'SYSTEM\CurrentControlSet\Control\Session Manager\Environment', 'Path', OrigPath)
  then begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Param) + ';', ';' + Uppercase(OrigPath) + ';') = 0;
end;
