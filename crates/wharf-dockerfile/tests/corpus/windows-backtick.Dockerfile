# escape=`

FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
WORKDIR C:\app
RUN Invoke-WebRequest -Uri https://example.com/tool.zip -OutFile tool.zip ; `
    Expand-Archive tool.zip -DestinationPath C:\tool ; `
    Remove-Item tool.zip
COPY . C:\app
CMD ["C:\\tool\\tool.exe"]
